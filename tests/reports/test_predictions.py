"""longdoc.reports.predictions under torchrun: each rank finds, proves and deletes only its own
blocks of the shared work folder, and only the tidying rank removes planted entries."""

from longdoc.reports.predictions import RowBlocks, RowFormat, owner, plan_blocks


def test_a_rank_sees_only_its_own_blocks_and_only_the_tidying_rank_removes_planted_entries(tmp_path):
    rows = RowFormat("jsonl", ["a", "b"], 0, 0)
    records = [(f"d{i}", "text", None) for i in range(6)]
    plan = [(start, start + len(block)) for start, block in plan_blocks(records, 2)]
    assert plan == [(0, 2), (2, 4), (4, 6)] and [owner(b, 2) for b in range(3)] == [0, 1, 0]
    for start, end in plan:
        (tmp_path / f"rows-{start:012d}-{end:012d}.part").write_text("not rows\n")
    planted = tmp_path / "rows-x-y.part"
    planted.write_text("x")

    rank1 = RowBlocks(tmp_path, rows, owned={plan[1]}, tidy=False)
    assert list(rank1.found) == [plan[1]] and planted.exists()
    assert rank1.resume(2, ["d2", "d3"]) is None  # fails its proof: deleted, and nothing of rank 0's
    assert sorted(p.name for p in tmp_path.glob("rows-0*")) == [RowBlocks(tmp_path, rows, set(), False).path(*b).name
                                                              for b in (plan[0], plan[2])]
    RowBlocks(tmp_path, rows)  # one process, or rank 0 before any rank writes
    assert not planted.exists()
