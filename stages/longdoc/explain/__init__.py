"""Why a head decided: each window's leave-one-out contribution and each term's share
(`contributions`), and windows and terms mapped back to the document's text (`text`).
"""
