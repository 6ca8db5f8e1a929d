"""A small TFLite flatbuffer writer for fully-integer graphs, without TensorFlow.

It fills the object-API classes that ``flatc --python --gen-object-api`` generates from
TFLite's published ``schema.fbs`` (``ModelT``, ``SubGraphT``, ``TensorT`` ...) and
serialises them with the ``flatbuffers`` runtime. The generated schema module ships in
the ``tflite-micro`` wheel (and, identical, in ``ai-edge-litert``); :func:`load_schema`
takes the first one importable.

Two things the generated Python leaves to the caller:

* ``Buffer.data`` is declared ``force_align: 16`` but the Python generator ignores
  attributes; :class:`_AlignedBuffer` packs every constant 16-byte aligned in the file
  (what the C++ converter does), so int32/int64 constants stay aligned when the model
  array itself is ``alignas(16)`` (a Cortex-M0 faults on unaligned words);
* buffer 0 is the empty sentinel; ``deprecated_builtin_code`` is ``min(code, 127)``.

Constants with equal bytes share one buffer. Op versions are 1: TFLite Micro ignores
them and LiteRT only rejects versions above the ones it registers.
"""
from __future__ import annotations

import importlib
import json
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

SCHEMA_MODULES = ("tflite_micro.tensorflow.lite.micro.python.schema_py_generated",
                  "ai_edge_litert.schema_py_generated")
FILE_IDENTIFIER = b"TFL3"
SCHEMA_VERSION = 3
BUFFER_ALIGN = 16
METADATA_NAME = "lbcnn"


def load_schema():
    """The generated TFLite schema module (``tflite-micro``'s, else ``ai-edge-litert``'s)."""
    errors = []
    for name in SCHEMA_MODULES:
        try:
            return importlib.import_module(name)
        except ImportError as exc:
            errors.append(f"{name.split('.')[0]}: {exc}")
    raise ConfigError("TFLite export needs the schema classes of tflite-micro "
                      "(pip install 'lbcnn[tflite]'); " + "; ".join(errors))


def import_flatbuffers():
    try:
        import flatbuffers
    except ImportError:
        raise ConfigError("TFLite export needs the flatbuffers runtime "
                          "(pip install 'lbcnn[tflite]')") from None
    return flatbuffers


def pack_int4(values) -> bytes:
    """TFLite's packed INT4: two values a byte, element 2i in the LOW nibble (an odd count
    leaves the last high nibble 0)."""
    v = np.asarray(values).reshape(-1).astype(np.int16)
    if v.size and (v.min() < -8 or v.max() > 7):
        raise ConfigError("int4 values must lie in [-8, 7]")
    if v.size % 2:
        v = np.concatenate([v, np.zeros(1, np.int16)])
    return ((v[0::2] & 0x0F) | ((v[1::2] & 0x0F) << 4)).astype(np.uint8).tobytes()


def unpack_int4(data: bytes, n: int) -> np.ndarray:
    b = np.frombuffer(bytes(data), np.uint8).astype(np.int16)
    out = np.empty(b.size * 2, np.int16)
    out[0::2] = ((b & 0x0F) ^ 8) - 8
    out[1::2] = ((b >> 4) ^ 8) - 8
    return out[:n].astype(np.int8)


@dataclass
class Quant:
    """Affine quantization ``real = scale * (q - zero_point)``; per axis when ``scale`` has
    more than one entry."""
    scale: object
    zero_point: object = 0
    axis: int = 0

    def scales(self) -> np.ndarray:
        return np.atleast_1d(np.asarray(self.scale, np.float32))

    def zero_points(self) -> np.ndarray:
        zp = np.atleast_1d(np.asarray(self.zero_point, np.int64))
        n = self.scales().size
        return np.full(n, zp[0], np.int64) if zp.size == 1 and n > 1 else zp


@dataclass
class TensorInfo:
    index: int
    name: str
    shape: tuple
    dtype: str
    quant: Quant | None
    constant: bool


class ModelBuilder:
    """Tensors, shared buffers and operators of one subgraph; :meth:`finish` gives bytes."""

    TYPE_NAMES = {"int32": "INT32", "int64": "INT64", "int16": "INT16", "int8": "INT8",
                  "int4": "INT4", "uint8": "UINT8", "float32": "FLOAT32"}

    def __init__(self, description: str = "lbcnn"):
        self.fb = load_schema()
        self.description = description
        self.buffers: list[bytes] = [b""]
        self._buffer_ids: dict[bytes, int] = {}
        self.tensors: list = []
        self.infos: list[TensorInfo] = []
        self.operators: list = []
        self._opcodes: dict[int, int] = {}
        self.opcode_list: list = []
        self.op_names: list[str] = []         # builtin names in first-use order
        self.metadata: list[tuple[str, int]] = []

    # -- tensors ------------------------------------------------------------------------
    def _buffer(self, data: bytes) -> int:
        if data not in self._buffer_ids:
            self.buffers.append(data)
            self._buffer_ids[data] = len(self.buffers) - 1
        return self._buffer_ids[data]

    def tensor(self, name: str, shape, dtype: str, data=None, quant: Quant | None = None) -> int:
        """A tensor; ``data`` makes it a constant (int4: the values, packed here)."""
        fb = self.fb
        t = fb.TensorT()
        t.name = name
        t.shape = [int(s) for s in shape]
        t.type = getattr(fb.TensorType, self.TYPE_NAMES[dtype])
        if data is not None:
            arr = np.asarray(data)
            if int(np.prod(t.shape)) != arr.size:
                raise ConfigError(f"tensor {name}: {arr.size} values for shape {t.shape}")
            if dtype == "int4":
                raw = pack_int4(arr)
            else:
                info = np.iinfo(np.dtype(dtype)) if dtype != "float32" else None
                if info is not None and arr.size and (arr.min() < info.min or arr.max() > info.max):
                    raise ConfigError(f"tensor {name}: values outside {dtype}")
                raw = np.ascontiguousarray(arr.astype(np.dtype(dtype).newbyteorder("<"))).tobytes()
            t.buffer = self._buffer(raw)
        else:
            t.buffer = 0
        if quant is not None:
            q = fb.QuantizationParametersT()
            q.scale = [float(s) for s in quant.scales()]
            q.zeroPoint = [int(z) for z in quant.zero_points()]
            q.quantizedDimension = int(quant.axis)
            t.quantization = q
        self.tensors.append(t)
        self.infos.append(TensorInfo(len(self.tensors) - 1, name, tuple(t.shape), dtype, quant,
                                     data is not None))
        return len(self.tensors) - 1

    def _opcode(self, name: str) -> int:
        code = int(getattr(self.fb.BuiltinOperator, name))
        if code not in self._opcodes:
            oc = self.fb.OperatorCodeT()
            oc.builtinCode = code
            oc.deprecatedBuiltinCode = min(code, 127)   # 127: PLACEHOLDER_FOR_GREATER_OP_CODES
            oc.version = 1
            self._opcodes[code] = len(self.opcode_list)
            self.opcode_list.append(oc)
            self.op_names.append(name)
        return self._opcodes[code]

    def op(self, name: str, inputs, outputs, options_type: str | None = None, options=None) -> None:
        o = self.fb.OperatorT()
        o.opcodeIndex = self._opcode(name)
        o.inputs = [int(i) for i in inputs]
        o.outputs = [int(i) for i in outputs]
        if options_type is not None:
            o.builtinOptionsType = int(getattr(self.fb.BuiltinOptions, options_type))
            o.builtinOptions = options
        self.operators.append(o)

    def add_metadata(self, name: str, data: bytes) -> None:
        self.buffers.append(bytes(data))      # never shared: a reader finds it by index
        self.metadata.append((name, len(self.buffers) - 1))

    # -- ops ----------------------------------------------------------------------------
    def _act(self, name: str | None) -> int:
        return int(getattr(self.fb.ActivationFunctionType, name or "NONE"))

    def conv(self, kind: str, x: int, weights, w_scale, bias, bias_dtype: str, name: str,
             out_shape, out_quant: Quant, out_dtype: str | None = None, multiplier: int = 1,
             padding: str = "SAME", activation: str | None = None,
             weight_dtype: str = "int8") -> int:
        """DEPTHWISE_CONV_2D (``weights`` [1, kh, kw, C*m]) or CONV_2D ([Co, kh, kw, C]),
        int8 (or packed int4) weights with one scale or one per output channel, stride 1;
        ``bias`` None leaves the optional bias input out."""
        fb = self.fb
        xin = self.infos[x]
        w = np.asarray(weights)
        depthwise = kind == "DEPTHWISE_CONV_2D"
        cout = w.shape[3] if depthwise else w.shape[0]
        ws = np.atleast_1d(np.asarray(w_scale, np.float32))
        wt = self.tensor(name + "/w", w.shape, weight_dtype, w,
                         Quant(ws, 0, axis=3 if depthwise else 0))
        bt = -1
        if bias is not None:
            bs = (np.float32(xin.quant.scales()[0]) * ws.astype(np.float64)).astype(np.float32)
            bt = self.tensor(name + "/b", (cout,), bias_dtype, np.asarray(bias).reshape(cout),
                             Quant(bs, 0))
        y = self.tensor(name, out_shape, out_dtype or xin.dtype, quant=out_quant)
        if depthwise:
            o = fb.DepthwiseConv2DOptionsT()
            o.depthMultiplier = int(multiplier)
            otype = "DepthwiseConv2DOptions"
        else:
            o = fb.Conv2DOptionsT()
            otype = "Conv2DOptions"
        o.padding = int(getattr(fb.Padding, padding))
        o.strideW = o.strideH = 1
        o.dilationWFactor = o.dilationHFactor = 1
        o.fusedActivationFunction = self._act(activation)
        self.op(kind, [x, wt, bt], [y], otype, o)
        return y

    def max_pool(self, x: int, name: str, out_shape, size: int, stride: int,
                 padding: str = "SAME") -> int:
        fb = self.fb
        xin = self.infos[x]
        y = self.tensor(name, out_shape, xin.dtype, quant=xin.quant)
        o = fb.Pool2DOptionsT()
        o.padding = int(getattr(fb.Padding, padding))
        o.strideW = o.strideH = int(stride)
        o.filterWidth = o.filterHeight = int(size)
        o.fusedActivationFunction = self._act(None)
        self.op("MAX_POOL_2D", [x], [y], "Pool2DOptions", o)
        return y

    def reshape(self, x: int, name: str, new_shape) -> int:
        xin = self.infos[x]
        shape = self.tensor(name + "/shape", (len(new_shape),), "int32",
                            np.asarray(new_shape, np.int32))
        y = self.tensor(name, new_shape, xin.dtype, quant=xin.quant)
        o = self.fb.ReshapeOptionsT()
        o.newShape = [int(s) for s in new_shape]
        self.op("RESHAPE", [x, shape], [y], "ReshapeOptions", o)
        return y

    def unary(self, op_name: str, x: int, name: str, out_dtype: str | None = None,
              out_quant: Quant | None = None) -> int:
        """QUANTIZE, RELU, LOGISTIC ...: ops without options."""
        xin = self.infos[x]
        y = self.tensor(name, xin.shape, out_dtype or xin.dtype,
                        quant=out_quant if out_quant is not None else xin.quant)
        self.op(op_name, [x], [y])
        return y

    def mirror_pad(self, x: int, name: str, pads, out_shape, mode: str = "SYMMETRIC") -> int:
        xin = self.infos[x]
        p = self.tensor(name + "/pads", (len(pads), 2), "int32", np.asarray(pads, np.int32))
        y = self.tensor(name, out_shape, xin.dtype, quant=xin.quant)
        o = self.fb.MirrorPadOptionsT()
        o.mode = int(getattr(self.fb.MirrorPadMode, mode))
        self.op("MIRROR_PAD", [x, p], [y], "MirrorPadOptions", o)
        return y

    def fully_connected(self, x: int, weights, w_scale, bias, bias_dtype: str, name: str,
                        out_dtype: str, out_quant: Quant, weight_dtype: str = "int8",
                        activation: str | None = None) -> int:
        """``weights`` [units, depth]; one scale or one per unit (axis 0)."""
        fb = self.fb
        xin = self.infos[x]
        w = np.asarray(weights)
        units = w.shape[0]
        ws = np.atleast_1d(np.asarray(w_scale, np.float32))
        wt = self.tensor(name + "/w", w.shape, weight_dtype, w, Quant(ws, 0, axis=0))
        bt = -1
        if bias is not None:
            # TFLite checks the bias scale against float32(s_in * s_w)
            bs = (np.float32(xin.quant.scales()[0]) * ws).astype(np.float32)
            bt = self.tensor(name + "/b", (units,), bias_dtype, np.asarray(bias).reshape(units),
                             Quant(bs, 0))
        y = self.tensor(name, (xin.shape[0], units), out_dtype, quant=out_quant)
        o = fb.FullyConnectedOptionsT()
        o.fusedActivationFunction = self._act(activation)
        o.weightsFormat = fb.FullyConnectedOptionsWeightsFormat.DEFAULT
        o.keepNumDims = False
        self.op("FULLY_CONNECTED", [x, wt, bt], [y], "FullyConnectedOptions", o)
        return y

    # -- serialise ----------------------------------------------------------------------
    def finish(self, inputs, outputs) -> bytes:
        fb = self.fb
        flatbuffers = import_flatbuffers()
        sg = fb.SubGraphT()
        sg.tensors = self.tensors
        sg.inputs = [int(i) for i in inputs]
        sg.outputs = [int(o) for o in outputs]
        sg.operators = self.operators
        sg.name = "main"
        m = fb.ModelT()
        m.version = SCHEMA_VERSION
        m.description = self.description
        m.operatorCodes = self.opcode_list
        m.subgraphs = [sg]
        m.buffers = [_AlignedBuffer(d) for d in self.buffers]
        if self.metadata:
            m.metadata = []
            for name, buf in self.metadata:
                md = fb.MetadataT()
                md.name = name
                md.buffer = buf
                m.metadata.append(md)
        b = flatbuffers.Builder(1024 + sum(len(d) + BUFFER_ALIGN for d in self.buffers))
        b.Finish(m.Pack(b), file_identifier=FILE_IDENTIFIER)
        return bytes(b.Output())


class _AlignedBuffer:
    """Stands in for ``BufferT`` in ``ModelT.Pack``: data aligned to 16 bytes."""

    def __init__(self, data: bytes):
        self.data = data

    def Pack(self, builder):
        data_off = None
        if self.data:
            n = len(self.data)
            builder.StartVector(1, n, BUFFER_ALIGN)
            builder.head = builder.head - n
            builder.Bytes[builder.head:builder.head + n] = self.data
            data_off = builder.EndVector()
        builder.StartObject(3)  # Buffer: data (slot 0), offset (1), size (2)
        if data_off is not None:
            builder.PrependUOffsetTRelativeSlot(0, data_off, 0)
        return builder.EndObject()


# -- reading back --------------------------------------------------------------------------
def is_tflite(data: bytes) -> bool:
    return len(data) >= 8 and data[4:8] == FILE_IDENTIFIER


def validate(data: bytes) -> None:
    """Check a flatbuffer before an interpreter sees it: the interpreters' C++ trusts the
    bytes (a malformed model can crash the process), so parse every table here and check
    that every index points inside the model. A ``DataError`` line otherwise."""
    from ..errors import DataError

    if not is_tflite(data):
        raise DataError("not a TFLite flatbuffer (no TFL3 identifier)")
    fb = load_schema()
    try:
        m = fb.ModelT.InitFromObj(fb.Model.GetRootAsModel(data, 0))
        subgraphs = m.subgraphs or []
        if len(subgraphs) != 1:
            raise ValueError(f"{len(subgraphs)} subgraphs (lbcnn graphs have one)")
        sg = subgraphs[0]
        n_t, n_b = len(sg.tensors or []), len(m.buffers or [])
        n_codes = len(m.operatorCodes or [])
        for t in sg.tensors or []:
            if not 0 <= int(t.buffer) < n_b:
                raise ValueError("a tensor's buffer index is out of range")
            if t.shape is not None and any(int(d) < 0 for d in t.shape):
                raise ValueError("a tensor has a negative dimension")
        for o in sg.operators or []:
            if not 0 <= int(o.opcodeIndex) < n_codes:
                raise ValueError("an operator code index is out of range")
            for i in list(o.inputs if o.inputs is not None else []) + \
                    list(o.outputs if o.outputs is not None else []):
                if not -1 <= int(i) < n_t:
                    raise ValueError("an operator's tensor index is out of range")
        io = list(sg.inputs if sg.inputs is not None else []) + \
            list(sg.outputs if sg.outputs is not None else [])
        if not io or any(not 0 <= int(i) < n_t for i in io):
            raise ValueError("missing or out-of-range inputs/outputs")
        for md in m.metadata or []:
            if not 0 <= int(md.buffer) < n_b:
                raise ValueError("a metadata buffer index is out of range")
    except DataError:
        raise
    except Exception as exc:  # the generated parser raises whatever a bad offset gives
        raise DataError(f"malformed TFLite flatbuffer ({str(exc).splitlines()[0][:120] or type(exc).__name__})") \
            from None


def read_metadata(data: bytes) -> dict[str, bytes]:
    """``{name: bytes}`` of a model's metadata entries (lazy flat accessors)."""
    fb = load_schema()
    m = fb.Model.GetRootAsModel(data, 0)
    out = {}
    for i in range(m.MetadataLength()):
        md = m.Metadata(i)
        buf = m.Buffers(md.Buffer())
        out[md.Name().decode(errors="replace")] = (buf.DataAsNumpy().tobytes()
                                                    if buf.DataLength() else b"")
    return out


def lbcnn_metadata(data: bytes) -> dict:
    """The ``lbcnn`` JSON metadata entry ({} when absent or unreadable)."""
    raw = read_metadata(data).get(METADATA_NAME)
    if not raw:
        return {}
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def describe(data: bytes) -> dict:
    """Ops (in order), tensors (name, dtype, shape, constant) and buffer bytes of a model."""
    fb = load_schema()
    m = fb.ModelT.InitFromObj(fb.Model.GetRootAsModel(data, 0))
    type_names = {v: k for k, v in vars(fb.TensorType).items() if not k.startswith("_")}
    op_names = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
    sg = m.subgraphs[0]
    tensors = []
    for t in sg.tensors:
        name = t.name.decode() if isinstance(t.name, bytes) else str(t.name)
        buf = m.buffers[t.buffer] if t.buffer else None
        const = buf is not None and buf.data is not None and len(buf.data) > 0
        q = t.quantization
        tensors.append({"name": name, "dtype": type_names.get(t.type, str(t.type)).lower(),
                        "shape": [int(s) for s in (t.shape if t.shape is not None else [])],
                        "constant": bool(const),
                        "scale": [float(s) for s in q.scale] if q is not None and q.scale is not None
                        else None,
                        "zero_point": [int(z) for z in q.zeroPoint]
                        if q is not None and q.zeroPoint is not None else None})
    ops = []
    for o in sg.operators:
        code = m.operatorCodes[o.opcodeIndex]
        builtin = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
        ops.append({"op": op_names.get(builtin, str(builtin)),
                    "inputs": [int(i) for i in o.inputs], "outputs": [int(i) for i in o.outputs]})
    return {"ops": ops, "tensors": tensors, "inputs": [int(i) for i in sg.inputs],
            "outputs": [int(i) for i in sg.outputs]}
