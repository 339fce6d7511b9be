"""The process a command runs in: the error type (`errors`), atomic files and locked work
folders (`workdir`), the device (`devices`), memory, progress and a second thread (`process`),
and a torchrun job's ranks (`ranks`). The lowest floor: imports nothing else of longdoc.
"""
