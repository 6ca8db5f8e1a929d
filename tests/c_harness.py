"""Compiling generated C in tests: the toolchain markers and a host program that prints the
returned class and the exact logits of every image, shared by the C, packing, Cortex-M,
lowbit and TFLite tests."""
import subprocess

import numpy as np
import pytest

from lbcnn.deploy.c_common import CFLAGS, find_cc

CC = find_cc()


def have(module):
    try:
        __import__(module)
    except ImportError:
        return False
    return True


needs_cc = pytest.mark.skipif(CC is None, reason="no C compiler found")
needs_mcu = pytest.mark.skipif(not all(have(m) for m in ("ziglang", "unicorn", "elftools")),
                               reason="pip install -e '.[mcu]'")
needs_elf = pytest.mark.skipif(CC is None or not have("elftools"),
                               reason="needs a C compiler and pyelftools")

LOGITS_MAIN = r"""
#include <stdio.h>
#include "model.h"
int main(void)
{
    static uint8_t image[LBCNN_INPUT_BYTES];
    int64_t logits[LBCNN_N_CLASSES];
    int k;
    while (fread(image, 1, sizeof image, stdin) == sizeof image) {
        printf("%d", lbcnn_predict_logits(image, logits));
        for (k = 0; k < LBCNN_N_CLASSES; k++) printf(" %lld", (long long)logits[k]);
        printf("\n");
    }
    return 0;
}
"""


def host_logits(c_dir, x, *flags):
    """(returned class, logits) of the C in c_dir compiled for this host, for uint8 images x."""
    (c_dir / "logits_main.c").write_text(LOGITS_MAIN)
    exe = c_dir / "lg"
    subprocess.run([CC, *CFLAGS, *flags, str(c_dir / "model.c"), str(c_dir / "logits_main.c"),
                    "-o", str(exe)], check=True, capture_output=True, text=True)
    out = subprocess.run([str(exe)], input=np.ascontiguousarray(x).tobytes(), capture_output=True,
                         check=True).stdout.decode().splitlines()
    rows = np.array([[int(v) for v in line.split()] for line in out if line.strip()])
    return rows[:, 0], rows[:, 1:]
