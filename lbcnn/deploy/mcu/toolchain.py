"""Cross-compile a generated lbcnn C project into a freestanding Cortex-M ELF with
the clang inside PyPI ``ziglang`` (``python -m ziglang cc``).

Flags: ``-std=c99 -Werror -Wall -Wextra -ffreestanding``, a linker script
(:data:`lbcnn.deploy.c_common.LINKER_SCRIPT`), ``--gc-sections`` and an explicit
``--entry`` (zig passes its own ``-e _start``, and with ``--gc-sections`` the
program would otherwise vanish). No ``-nostdlib``: zig then links its
compiler_rt (Cortex-M0+ needs ``__aeabi_uidivmod``, ``__aeabi_lmul``). The M4
build uses ``+strict_align`` so the compiler never emits an unaligned access.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ...errors import ConfigError
from ..c_common import LINKER_SCRIPT

CPUS = {
    "cortex-m4": ["-target", "thumb-freestanding-eabihf", "-mcpu=cortex_m4+strict_align"],
    "cortex-m0plus": ["-target", "thumb-freestanding-eabi", "-mcpu=cortex_m0plus"],
}
OPTS = ("O2", "Os", "O3", "O1")

# The emulator writes an image into g_image and calls lbcnn_predict_logits(g_image,
# g_logits) / lbcnn_predict(g_image) directly; a real target's main() does the same.
HARNESS_C = r"""/* lbcnn bare-metal harness: input/output buffers and the three mem* functions a
 * compiler may call even with -ffreestanding (dropped by --gc-sections when unused). */
#include <stddef.h>
#include <stdint.h>
#include "model.h"

uint8_t g_image[LBCNN_INPUT_BYTES] __attribute__((aligned(4)));
int64_t g_logits[LBCNN_N_CLASSES];

void *memcpy(void *d, const void *s, size_t n)
{
    uint8_t *dp = d;
    const uint8_t *sp = s;
    while (n--) *dp++ = *sp++;
    return d;
}

void *memset(void *d, int c, size_t n)
{
    uint8_t *dp = d;
    while (n--) *dp++ = (uint8_t)c;
    return d;
}

void *memmove(void *d, const void *s, size_t n)
{
    uint8_t *dp = d;
    const uint8_t *sp = s;
    if (dp < sp) {
        while (n--) *dp++ = *sp++;
    } else {
        dp += n;
        sp += n;
        while (n--) *--dp = *--sp;
    }
    return d;
}
"""

HARNESS_SYMBOLS = ("g_image", "g_logits")


def zig_available() -> bool:
    try:
        import ziglang  # noqa: F401
    except ImportError:
        return False
    return True


def compile_flags(cpu: str, opt: str) -> list[str]:
    if cpu not in CPUS:
        raise ConfigError(f"unknown cpu {cpu!r}: use one of {', '.join(CPUS)}")
    if opt.lstrip("-") not in OPTS:
        raise ConfigError(f"unknown optimisation {opt!r}: use one of {', '.join(OPTS)}")
    return [*CPUS[cpu], "-std=c99", f"-{opt.lstrip('-')}", "-g", "-ffreestanding",
            "-fno-unwind-tables", "-fno-asynchronous-unwind-tables", "-ffunction-sections",
            "-fdata-sections", "-Wall", "-Wextra", "-Werror"]


def build_elf(c_dir, cpu: str = "cortex-m4", opt: str = "O2", out: Path | None = None,
              timeout: float = 600, align_trap: bool = False) -> Path:
    """model.c + the harness -> ``lbcnn_<cpu>_<opt>.elf`` in ``c_dir`` (or ``out``).

    ``align_trap``: also ``-fsanitize=alignment -fsanitize-trap=alignment``, so any
    access whose address is not aligned to its type executes a ``udf`` (the emulator
    stops there). With ``+strict_align`` the compiler itself emits only naturally
    aligned accesses, so a run without a trap had no unaligned access."""
    if not zig_available():
        raise ConfigError("ziglang is not installed: pip install -e '.[mcu]'")
    c_dir = Path(c_dir)
    ld = c_dir / "link_cortexm.ld"
    if not ld.exists():
        ld.write_text(LINKER_SCRIPT)
    harness = c_dir / "mcu_harness.c"
    harness.write_text(HARNESS_C)
    tag = "_aligntrap" if align_trap else ""
    out = Path(out) if out else \
        c_dir / f"lbcnn_{cpu.replace('-', '_')}_{opt.lstrip('-')}{tag}.elf"
    extra = ["-fsanitize=alignment", "-fsanitize-trap=alignment"] if align_trap else []
    cmd = [sys.executable, "-m", "ziglang", "cc", *compile_flags(cpu, opt), *extra, f"-I{c_dir}",
           "-T", str(ld), "-Wl,--gc-sections", "-Wl,--entry=lbcnn_predict_logits",
           "-Wl,-u,lbcnn_predict", "-Wl,-u,g_image", "-Wl,-u,g_logits",
           str(c_dir / "model.c"), str(harness), "-o", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        msg = (res.stderr or res.stdout).strip().splitlines()
        raise ConfigError(f"the {cpu} build failed: {msg[0] if msg else 'no output'}"
                          + (f" (+{len(msg) - 1} more lines)" if len(msg) > 1 else ""))
    return out


def command_line(cpu: str, opt: str) -> str:
    return " ".join(["python -m ziglang cc", *compile_flags(cpu, opt), "-T link_cortexm.ld",
                     "-Wl,--gc-sections -Wl,--entry=lbcnn_predict_logits",
                     "model.c mcu_harness.c -o lbcnn.elf"])
