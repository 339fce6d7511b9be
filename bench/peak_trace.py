"""Where a command's memory peaks: its resident memory sampled beside its output lines.

    .venv/bin/python bench/peak_trace.py --log runs/trace.log -- .venv/bin/python cli.py train-head ...

Runs the command after `--`, stamps each line it prints (stdout and stderr together) with
the seconds since its start, samples its resident memory (VmRSS of /proc/PID/status, Linux)
every `--every` seconds, and writes to `--log` the stamped lines, then `PEAK <GiB> at <s>`,
then every 20th sample as `RSS <s> <GiB>`. Prints the PEAK line. A sampled peak can miss a
spike shorter than the interval; the command's own ru_maxrss (its summary line) cannot.
Used for BENCHMARKS S5: train-head's peak falls in the linear branch's refit.
"""

from __future__ import annotations

import argparse
import subprocess
import threading
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log", required=True)
    parser.add_argument("--every", type=float, default=0.1, help="seconds between samples")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after --")
    start = time.time()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    samples = []

    def sample():
        while child.poll() is None:
            try:
                with open(f"/proc/{child.pid}/status") as status:
                    for line in status:
                        if line.startswith("VmRSS"):
                            samples.append((time.time() - start, int(line.split()[1]) / 2**20))
            except OSError:  # the child has just ended
                pass
            time.sleep(args.every)

    threading.Thread(target=sample, daemon=True).start()
    with open(args.log, "w") as log:
        for line in child.stdout:
            log.write(f"{time.time() - start:7.1f} {line}")
        child.wait()
        at, peak = max(samples, key=lambda s: s[1]) if samples else (0.0, 0.0)
        summary = f"PEAK {peak:.3f} GiB at {at:.1f} s"
        log.write(summary + "\n")
        for at, gib in samples[::20]:
            log.write(f"RSS {at:7.1f} {gib:.3f}\n")
    print(summary)
    raise SystemExit(child.returncode)


if __name__ == "__main__":
    main()
