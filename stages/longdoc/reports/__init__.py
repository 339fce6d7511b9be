"""What people read: scores (`metrics`) and the self-contained HTML report (`html`).
"""
