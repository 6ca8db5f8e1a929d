"""Run a ``.tflite`` in TensorFlow Lite Micro's reference interpreter (``tflite-micro``)
or in LiteRT with its reference kernels (``ai-edge-litert``, ``BUILTIN_REF``), and read
TFLite Micro's arena report.

Both interpreters print their errors from C++ to file descriptor 2; :func:`capture_fd2`
collects that text so a failure is reported with the kernel's own message. LiteRT's
default (XNNPACK / optimized) kernels are deliberately not offered: they round
differently from the reference kernels a microcontroller runs.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

import numpy as np

from ..errors import ConfigError, DataError

INTERPRETERS = ("tflm", "litert")


@contextlib.contextmanager
def capture_fd2():
    """What C/C++ code writes to fd 2 while the block runs, in ``box['text']``."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        box = {"text": ""}
        try:
            yield box
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            box["text"] = tmp.read().decode(errors="replace")


def _tflm():
    try:
        from tflite_micro import runtime
    except ImportError:
        raise ConfigError("running .tflite files needs tflite-micro "
                          "(pip install 'lbcnn[tflite]')") from None
    return runtime


def _litert():
    try:
        from ai_edge_litert import interpreter
    except ImportError:
        raise ConfigError("--interpreter litert needs ai-edge-litert "
                          "(pip install 'lbcnn[tflite]')") from None
    return interpreter


def kernel_message(log: str) -> str:
    """The kernel's own complaint in a C++ log: the first line that says what failed."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    for ln in lines:
        if "was not true" in ln or "not supported" in ln or "Failed to resize" in ln or \
                "!=" in ln or "Didn't find op" in ln or "Unsupported" in ln:
            return ln
    return lines[0] if lines else ""


def arena_upper_bound(model: bytes) -> int:
    """An arena that always suffices: every activation at once, 10 x the model (TFLM's own
    default) or 1 MiB, whichever is largest."""
    from .tflite_builder import describe
    d = describe(model)
    sizes = {"int8": 1, "int16": 2, "int32": 4, "int64": 8, "float32": 4}
    acts = sum(int(np.prod(t["shape"])) * sizes.get(t["dtype"], 8)
               for t in d["tensors"] if not t["constant"])
    return max(2 * acts + (256 << 10), 10 * len(model), 1 << 20)


class Runner:
    """One interpreter over a model: ``run(images) -> (n, k)`` integer outputs."""

    def __init__(self, model: bytes, interpreter: str = "tflm", arena_size: int | None = None,
                 preserve: bool = False):
        """``preserve`` keeps every intermediate tensor readable (:meth:`trace`)."""
        if interpreter not in INTERPRETERS:
            raise ConfigError(f"interpreter must be one of {', '.join(INTERPRETERS)}, "
                              f"got {interpreter!r}")
        self.kind = interpreter
        self.model = bytes(model)
        from .tflite_builder import validate
        validate(self.model)
        with capture_fd2() as log:
            try:
                if interpreter == "tflm":
                    rt = _tflm()
                    cfg = (rt.InterpreterConfig.kPreserveAllTensors if preserve
                           else rt.InterpreterConfig.kAllocationRecording)
                    self._it = rt.Interpreter.from_bytes(
                        self.model, arena_size=arena_size or arena_upper_bound(self.model),
                        intrepreter_config=cfg)
                    inp = self._it.get_input_details(0)
                    out = self._it.get_output_details(0)
                else:
                    lr = _litert()
                    self._it = lr.Interpreter(
                        model_content=self.model, num_threads=1,
                        experimental_op_resolver_type=lr.OpResolverType.BUILTIN_REF,
                        experimental_preserve_all_tensors=preserve)
                    self._it.allocate_tensors()
                    inp = self._it.get_input_details()[0]
                    out = self._it.get_output_details()[0]
                error = None
            except (RuntimeError, ValueError) as exc:
                error = str(exc)
        if error is not None:
            msg = kernel_message(log["text"])
            raise DataError(f"{'TFLite Micro' if interpreter == 'tflm' else 'LiteRT'} cannot "
                            f"load the model: {error}" + (f" ({msg})" if msg else ""))
        self.input_shape = tuple(int(s) for s in inp["shape"])
        self.input_dtype = np.dtype(inp["dtype"])
        if self.input_dtype.kind != "i" or np.dtype(out["dtype"]).kind != "i":
            raise DataError(f"not a fully-integer graph (input {self.input_dtype}, output "
                            f"{np.dtype(out['dtype'])}); lbcnn runs integer .tflite files")
        self.input_zero_point = int(_zero_point(inp))
        self.input_index = inp.get("index", 0)
        self.output_index = out.get("index", 0)
        self.output_dtype = np.dtype(out["dtype"])
        self.n_outputs = int(np.prod(out["shape"][1:]))
        self.output_scale, self.output_zero_point = _scale(out), int(_zero_point(out))

    def quantize_input(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 pixels -> the int8 input (``q = p + zero_point``: the input scale is the
        model's pixel scale, so ``s * (q - zp) = s * p``)."""
        q = pixels.astype(np.int16) + self.input_zero_point
        info = np.iinfo(self.input_dtype)
        if q.min(initial=0) < info.min or q.max(initial=0) > info.max:
            raise DataError(f"pixels do not fit the model's {self.input_dtype} input")
        return q.astype(self.input_dtype)

    def run(self, pixels: np.ndarray) -> np.ndarray:
        """(n, H, W, C) uint8 -> (n, k) raw integer outputs, one invoke per image."""
        return self._invoke(pixels, ())[0]

    def trace(self, pixels: np.ndarray, tensors) -> dict[int, np.ndarray]:
        """The values of tensors (by index) for each image: {index: (n, *shape)}; needs
        ``preserve=True``."""
        return self._invoke(pixels, tuple(tensors))[1]

    def _invoke(self, pixels: np.ndarray, keep: tuple):
        x = np.asarray(pixels)
        if tuple(x.shape[1:]) != self.input_shape[1:]:
            raise DataError(f"images have shape {tuple(x.shape[1:])} but the .tflite takes "
                            f"{self.input_shape[1:]}")
        q = self.quantize_input(x)
        out = []
        kept: dict[int, list] = {t: [] for t in keep}
        with capture_fd2() as log:
            try:
                for img in q:
                    if self.kind == "tflm":
                        self._it.set_input(img[None], 0)
                        self._it.invoke()
                        out.append(np.array(self._it.get_output(0)).reshape(-1))
                        for t in keep:
                            kept[t].append(np.array(self._it.GetTensor(t, 0)["tensor_data"]))
                    else:
                        self._it.set_tensor(self.input_index, img[None])
                        self._it.invoke()
                        out.append(np.array(self._it.get_tensor(self.output_index)).reshape(-1))
                        for t in keep:
                            kept[t].append(np.array(self._it.get_tensor(t)))
                error = None
            except (RuntimeError, ValueError) as exc:
                error = str(exc)
        if error is not None:
            msg = kernel_message(log["text"])
            raise DataError(f"the interpreter failed: {error}" + (f" ({msg})" if msg else ""))
        outputs = np.stack(out).astype(np.int64) if out else np.zeros((0, self.n_outputs), np.int64)
        return outputs, {t: np.concatenate(v) if v else np.zeros(0) for t, v in kept.items()}

    def allocations(self) -> dict:
        """TFLite Micro's arena report (after one invoke): total, head, tail and categories."""
        if self.kind != "tflm":
            raise ConfigError("the arena report comes from TFLite Micro (--interpreter tflm)")
        self.run(np.zeros((1, *self.input_shape[1:]), np.uint8))
        with capture_fd2() as log:
            self._it.print_allocations()
        return parse_allocations(log["text"])


def _zero_point(details) -> int:
    q = details.get("quantization_parameters") or {}
    zp = q.get("zero_points") if isinstance(q, dict) else None
    if zp is not None and len(zp):
        return int(np.asarray(zp).reshape(-1)[0])
    qq = details.get("quantization")
    if qq is not None and len(qq) == 2:
        return int(qq[1])
    return 0


def _scale(details) -> float:
    q = details.get("quantization_parameters") or {}
    s = q.get("scales") if isinstance(q, dict) else None
    if s is not None and len(s):
        return float(np.asarray(s).reshape(-1)[0])
    qq = details.get("quantization")
    if qq is not None and len(qq) == 2:
        return float(qq[0])
    return 1.0


_ALLOC = re.compile(r"'([^']+)' used (\d+) bytes with alignment overhead \(requested (\d+) "
                    r"bytes for (\d+) (\w+)\)")


def parse_allocations(text: str) -> dict:
    """``print_allocations()`` text -> {'total', 'head', 'tail', 'categories': [...]}."""
    out: dict = {"categories": []}
    for key in ("total", "head", "tail"):
        m = re.search(rf"Arena allocation {key} (\d+) bytes", text)
        if m:
            out[key] = int(m.group(1))
    for m in _ALLOC.finditer(text):
        out["categories"].append({"name": m.group(1), "bytes": int(m.group(2)),
                                  "requested": int(m.group(3)), "count": int(m.group(4)),
                                  "unit": m.group(5)})
    if "total" not in out:
        raise DataError("TFLite Micro printed no arena report: "
                        + (text.strip().splitlines() or ["(nothing)"])[0][:200])
    return out


def try_load(model: bytes, image: np.ndarray | None = None) -> str | None:
    """None when TFLite Micro loads and runs the model; else its message (one line)."""
    try:
        r = Runner(model, "tflm")
        if image is not None:
            r.run(image[None])
    except DataError as exc:
        return str(exc)
    return None
