"""Flash, static RAM and a Thumb instruction-set check from an ELF (pyelftools)."""
from __future__ import annotations

from .toolchain import HARNESS_SYMBOLS


def _elffile(f):
    from elftools.elf.elffile import ELFFile
    return ELFFile(f)


def symbols(path) -> dict[str, tuple[int, int]]:
    with open(path, "rb") as f:
        elf = _elffile(f)
        tab = elf.get_section_by_name(".symtab")
        return {s.name: (int(s["st_value"]), int(s["st_size"])) for s in tab.iter_symbols()
                if s.name}


def sizes(path) -> dict:
    """Section sizes (SHF_ALLOC) -> flash = text + rodata + data (+ exidx), static RAM =
    data + bss, less the harness's input/output buffers (reported apart)."""
    with open(path, "rb") as f:
        elf = _elffile(f)
        sec = {s.name: int(s["sh_size"]) for s in elf.iter_sections() if s["sh_flags"] & 2}
    sym = symbols(path)
    text, ro, data, bss = (sec.get(n, 0) for n in (".text", ".rodata", ".data", ".bss"))
    exidx = sec.get(".ARM.exidx", 0)
    harness = sum(sym.get(n, (0, 0))[1] for n in HARNESS_SYMBOLS)
    return {"text": text, "rodata": ro, "data": data, "bss": bss,
            "flash_bytes": text + ro + data + exidx, "ram_bytes": data + bss - harness,
            "harness_buffers": harness}


def _is32(hw: int) -> bool:
    return (hw >> 11) in (0b11101, 0b11110, 0b11111)


def thumb_count(code: bytes) -> int:
    """Number of Thumb instructions in a run of code: a halfword whose top five bits are
    0b11101, 0b11110 or 0b11111 starts a 32-bit instruction, anything else is 16-bit."""
    n = i = 0
    end = len(code) - 1
    while i < end:
        i += 4 if (code[i + 1] >> 3) in (0b11101, 0b11110, 0b11111) else 2
        n += 1
    return n


def code_ranges(path) -> list[tuple[int, bytes]]:
    """(address, bytes) of the Thumb code in .text, using the $t / $d mapping symbols
    to skip literal pools."""
    with open(path, "rb") as f:
        elf = _elffile(f)
        text = elf.get_section_by_name(".text")
        base, data = int(text["sh_addr"]), text.data()
        marks = sorted((int(s["st_value"]) & ~1, s.name[:2])
                       for s in elf.get_section_by_name(".symtab").iter_symbols()
                       if s.name in ("$t", "$d") or s.name.startswith(("$t.", "$d.")))
    marks = [(a, k) for a, k in marks if base <= a < base + len(data)]
    if not marks:
        return [(base, data)]
    out = []
    for i, (a, kind) in enumerate(marks):
        end = marks[i + 1][0] if i + 1 < len(marks) else base + len(data)
        if kind == "$t" and end > a:
            out.append((a, data[a - base:end - base]))
    return out


def armv6m_violations(path) -> list[str]:
    """32-bit instructions outside ARMv6-M (which has only BL, MSR, MRS, DMB, DSB, ISB)."""
    bad = []
    for addr, code in code_ranges(path):
        i = 0
        while i + 1 < len(code):
            hw = code[i] | code[i + 1] << 8
            if _is32(hw) and i + 3 < len(code):
                hw2 = code[i + 2] | code[i + 3] << 8
                ok = ((hw >> 11) == 0b11110 and (hw2 & 0xD000) == 0xD000) or \
                     (hw & 0xFFE0) == 0xF380 or (hw & 0xFFE0) == 0xF3E0 or \
                     hw == 0xF3BF
                if not ok:
                    bad.append(f"{addr + i:#x}: {hw:04x} {hw2:04x}")
                i += 4
            else:
                i += 2
    return bad


__all__ = ["armv6m_violations", "code_ranges", "sizes", "symbols", "thumb_count"]
