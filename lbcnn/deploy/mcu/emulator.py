"""Run an lbcnn Cortex-M ELF in the PyPI emulator ``unicorn``.

* Memory as in the linker script (flash 0x08000000, RAM 0x20000000); the loadable
  segments are written at their run addresses (what a startup file would do).
* Instructions are counted per executed translation block by decoding the Thumb
  instruction lengths of the block (a per-instruction ``UC_HOOK_CODE`` skips the
  instructions of an IT block whose condition fails, about 2.5 % here; counting
  whole blocks counts them, as the CPU issues them, and is ~20x faster).
* The stack is painted before the runs; its peak is the lowest address written.
* unicorn checks neither the instruction set (its M0 model runs Thumb-2) nor
  alignment: see :func:`lbcnn.deploy.mcu.elf.armv6m_violations` and the
  alignment-trap build (:func:`lbcnn.deploy.mcu.toolchain.build_elf`).
"""
from __future__ import annotations

import numpy as np

from .elf import symbols, thumb_count

FLASH, FLASH_SIZE = 0x08000000, 1 << 20
RAM, RAM_SIZE = 0x20000000, 256 << 10
SENTINEL = FLASH + FLASH_SIZE - 0x100   # return address: never code
PAINT = 0xA5


class Emulator:
    def __init__(self, elf_path, cpu: str = "cortex-m4"):
        from elftools.elf.elffile import ELFFile
        from unicorn import (UC_ARCH_ARM, UC_HOOK_BLOCK, UC_MODE_MCLASS, UC_MODE_THUMB,
                             UC_PROT_ALL, Uc)
        from unicorn.arm_const import UC_CPU_ARM_CORTEX_M0, UC_CPU_ARM_CORTEX_M4

        self.sym = symbols(elf_path)
        with open(elf_path, "rb") as f:
            segs = [(int(s["p_vaddr"]), s.data()) for s in ELFFile(f).iter_segments()
                    if s["p_type"] == "PT_LOAD"]
        uc = self.uc = Uc(UC_ARCH_ARM, UC_MODE_THUMB | UC_MODE_MCLASS)
        # no Cortex-M0+ model: the M0 has the same ISA (ARMv6-M), but runs Thumb-2 too
        uc.ctl_set_cpu_model(UC_CPU_ARM_CORTEX_M4 if cpu == "cortex-m4" else UC_CPU_ARM_CORTEX_M0)
        uc.mem_map(FLASH, FLASH_SIZE, UC_PROT_ALL)
        uc.mem_map(RAM, RAM_SIZE, UC_PROT_ALL)
        for vaddr, data in segs:
            if data:
                uc.mem_write(vaddr, data)
        self.stack_top = self.sym["__stack_top"][0]
        self.stack_floor = self.sym["__bss_end"][0]
        uc.mem_write(self.stack_floor, bytes([PAINT]) * (self.stack_top - self.stack_floor))
        self.count = 0
        self._blocks: dict[tuple[int, int], int] = {}
        self._hook = uc.hook_add(UC_HOOK_BLOCK, self._on_block)

    def stop_counting(self) -> None:
        """Remove the block hook: the emulation then runs at unicorn's own speed."""
        if self._hook is not None:
            self.uc.hook_del(self._hook)
            self._hook = None

    def _on_block(self, uc, addr, size, _):
        key = (addr, size)
        n = self._blocks.get(key)
        if n is None:
            n = self._blocks[key] = thumb_count(bytes(uc.mem_read(addr, size)))
        self.count += n

    def call(self, fn: str, *args: int) -> tuple[int, int]:
        """Call ``fn(args...)``: (r0, instructions)."""
        from unicorn import UcError
        from unicorn.arm_const import (UC_ARM_REG_LR, UC_ARM_REG_PC, UC_ARM_REG_R0,
                                       UC_ARM_REG_SP)
        uc = self.uc
        for i, v in enumerate(args):
            uc.reg_write(UC_ARM_REG_R0 + i, v)
        uc.reg_write(UC_ARM_REG_SP, self.stack_top)
        uc.reg_write(UC_ARM_REG_LR, SENTINEL | 1)
        start = self.count
        try:
            uc.emu_start(self.sym[fn][0] | 1, SENTINEL)
        except UcError as e:
            raise RuntimeError(f"{fn}: {e} at pc={uc.reg_read(UC_ARM_REG_PC):#x}") from None
        return int(np.uint32(uc.reg_read(UC_ARM_REG_R0)).astype(np.int32)), self.count - start

    def predict_logits(self, image: np.ndarray, k: int) -> tuple[int, np.ndarray, int]:
        img, lg = self.sym["g_image"][0], self.sym["g_logits"][0]
        self.uc.mem_write(img, np.ascontiguousarray(image, np.uint8).tobytes())
        cls, n = self.call("lbcnn_predict_logits", img, lg)
        logits = np.frombuffer(bytes(self.uc.mem_read(lg, 8 * k)), "<i8").copy()
        return cls, logits, n

    def predict(self, image: np.ndarray) -> tuple[int, int]:
        img = self.sym["g_image"][0]
        self.uc.mem_write(img, np.ascontiguousarray(image, np.uint8).tobytes())
        return self.call("lbcnn_predict", img)

    def stack_peak(self) -> int:
        mem = bytes(self.uc.mem_read(self.stack_floor, self.stack_top - self.stack_floor))
        first = next((i for i, b in enumerate(mem) if b != PAINT), len(mem))
        return len(mem) - first


__all__ = ["Emulator"]
