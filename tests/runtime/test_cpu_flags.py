"""cpu_flags: the flags line of /proc/cpuinfo as a set, empty where it cannot be read; the
precision checks (native bf16, VNNI) read it."""

from pathlib import Path

from longdoc.encoding import encoder as encoder_module
from longdoc.encoding import int8 as int8_module
from longdoc.runtime import devices


def fake_cpuinfo(monkeypatch, tmp_path, text: str | None):
    path = tmp_path / "cpuinfo"
    if text is not None:
        path.write_text(text)
    monkeypatch.setattr(devices, "Path", lambda _: Path(path))


def test_flags_of_the_first_flags_line(monkeypatch, tmp_path):
    fake_cpuinfo(monkeypatch, tmp_path, "model name\t: X\nflags\t\t: fpu avx512f avx512_bf16 amx_int8\n"
                                        "bugs\t\t: avx512_vnni\n")
    assert devices.cpu_flags() == {"fpu", "avx512f", "avx512_bf16", "amx_int8"}
    assert encoder_module.cpu_has_native_bf16() and int8_module.cpu_has_vnni()


def test_a_flag_is_a_whole_word(monkeypatch, tmp_path):
    fake_cpuinfo(monkeypatch, tmp_path, "flags\t\t: fpu avx512_bf16x avx_vnnix\n")
    assert not encoder_module.cpu_has_native_bf16() and not int8_module.cpu_has_vnni()


def test_unreadable_or_flagless_cpuinfo_has_no_flags(monkeypatch, tmp_path):
    fake_cpuinfo(monkeypatch, tmp_path, None)
    assert devices.cpu_flags() == frozenset() and not encoder_module.cpu_has_native_bf16()
    fake_cpuinfo(monkeypatch, tmp_path, "model name\t: Y\n")
    assert devices.cpu_flags() == frozenset() and not int8_module.cpu_has_vnni()
