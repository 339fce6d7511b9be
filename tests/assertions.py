"""Assertions the test files share: the error contract (one line, `error: ...`, exit 2, no
traceback) and the equality of a resumed run with an uninterrupted one."""

from __future__ import annotations

import torch

from longdoc import cli


def one_line_error(err: str, *expected: str) -> str:
    """`err` (a command's stderr) is exactly one line, `error: ...`, holding each of `expected`."""
    lines = err.strip().splitlines()
    assert err.count("\n") == 1 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def refused(capsys, args, *expected) -> str:
    """Run cli.py ARGS in this process: exit 2, one line `error: ...` holding each of `expected`."""
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert "Traceback" not in captured.out
    return one_line_error(captured.err, *expected)


def same_weights(got: dict, want: dict, rtol: float = 1e-5, atol: float = 1e-6):
    """Two state dicts hold the same names and, within fp32 rounding of a resumed run, the same tensors."""
    assert sorted(got) == sorted(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=rtol, atol=atol)


def error_lines(result) -> list[str]:
    """The `error: ` lines of a finished process's stderr (a torchrun job prints its own report too)."""
    return [line for line in result.stderr.splitlines() if line.startswith("error: ")]
