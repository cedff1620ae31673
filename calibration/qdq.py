"""Q/DQ insertion following TensorRT's explicit-quantization placement rules.

Why our own pass: TensorRT builds exactly the int8 regions that QuantizeLinear /
DequantizeLinear nodes mark, so *where* they go decides what fuses. ONNX Runtime's
``quantize_static`` quantizes every op it knows, including biases as int32
``DequantizeLinear`` (rejected by the TensorRT-RTX parser, see DESIGN.md) and Q/DQ on outputs
that break TensorRT's Conv+Add fusions. The rules applied here are TensorRT's ("Q/DQ Layer-Placement Recommendations" and "Q/DQ
Fusion" in the developer guide's *Explicit Quantization* chapter, cited below as [TRT]) and were
checked against NVIDIA ModelOpt 0.47's ONNX quantizer (``modelopt/onnx/quantization/int8.py``,
``partitioning.py``, ``graph_utils.py``, cited as [MO]); where ours differs, the reason is given:

1. **Quantize all inputs of weighted ops** (Conv): the activation input (per-tensor scale
   from calibration) and the weight (per output channel, axis 0, max |w| / 127). [TRT]: "quantize
   all inputs of weighted operations" — it is what lets the Conv run an INT8 kernel. [MO]: same
   (Conv/Gemm/MatMul partitions are rooted at the weighted op and quantize its inputs).
2. **Do not quantize outputs of weighted ops**, and put nothing between Conv and its BN/ReLU/
   HardSwish/HardSigmoid epilogue: [TRT] fuses Conv+BN+activation itself ("do not simulate
   batch-normalization and ReLU fusions") and fuses the *next* Q into the Conv's output, so the
   Conv writes INT8 when its consumer is quantized. [MO]: the same rule (its CASK partitions Conv → BN → ReLU
   get no inner Q/DQ), but **ModelOpt 0.47 does not take HardSwish into the partition**: on the
   demo model it puts a Q/DQ pair between 20 Convs and their HardSwish (and on the Conv side of
   5 Adds), i.e. a Conv output quantized before its epilogue; ours follows [TRT] there.
3. **Quantize the residual input of a residual Add**, not the branch coming straight from a
   Conv: [TRT] fuses an element-wise Add into the Conv that feeds it, as an INT8 residual, only
   when the Add's *other* input is quantized (its figures 6/7: with a float residual the fused
   Conv's output is limited to float and the trailing Q cannot fuse); a Q/DQ on the Conv branch
   "forces the separation of the convolution from the element-wise addition" (figure 9). The
   branch is found like [MO]'s ``build_non_residual_input_map``: each Add input is traced back
   through BatchNormalization/Identity to a Conv ("backbone"); with one backbone, the other
   input is the residual; with two (ResNet downsample blocks), the input with the longer path
   to their lowest common ancestor is the main branch and the other one is quantized. An Add
   whose other input is computed *from* the backbone Conv itself is not a residual.
4. **No bias quantization**: biases stay float. [TRT] folds the bias into the Conv kernel; the
   TensorRT-RTX parser rejects ONNX Runtime's int32 bias ``DequantizeLinear`` (DESIGN.md).
   [MO]: same (ModelOpt turns ORT's bias quantization off).
5. **Head kept float by default**: Convs from which a graph output is reached without
   passing another Conv (the final classifier) keep float inputs; Resize and ArgMax never get
   Q/DQ. ``exclude`` (fnmatch patterns on node names) keeps further Convs/Adds in float.
   [TRT]: precision-sensitive layers may stay in high precision. **Differs from [MO]**, which
   quantizes a Conv that writes a graph output (``get_skipped_output_layers`` skips only
   non-Conv output layers): the classifier is one 1×1 Conv (1 of the demo model's 70) whose
   logits feed the argmax directly, the most accuracy-sensitive tensor of the network; keeping it
   float costs one small Conv of INT8 (``quantize_head=True`` gives ModelOpt's choice).

**The mixed INT8 + FP16 graph** (``quantize_onnx(rest="fp16")``, strongly typed TensorRT) keeps
this placement unchanged, on purpose:

6. **Q/DQ only on Conv inputs, residual Add inputs and rule 9's pools**, never between two
   non-quantized layers: with the rest in FP16, a Q/DQ pair between two FP16 layers would only
   force an FP16→INT8→FP16 reformat that no kernel absorbs ([TRT]: the optimizer executes
   exactly the conversions the graph specifies). **Differs from [MO]** in one place: ModelOpt
   also quantizes both inputs of non-fusible Muls (MobileNetV3's squeeze-excitation
   ``x * hardsigmoid(...)``) and the GlobalAveragePool before them, so that Mul runs as an INT8
   point-wise kernel. Ours leaves that Mul in FP16, followed by the next Conv's Q, which
   TensorRT's point-wise fusion can absorb into the Mul's kernel output (not verified here: no
   GPU to read the engine's layers). ModelOpt's variant is a speed bet we could not measure, not
   a case the guidance names as a reformat or a missed fusion, so ours is unchanged.
7. **Concat and Resize get no Q/DQ of their own**: [TRT] propagates a Q backwards through
   layers that commute with quantization (Concat among them; its figure "DQ forward-propagation
   and Q backward-propagation") when the consumer Conv is quantized, and requires the Qs that
   meet there to have equal scales (figure 10) — one Q after the Concat gives exactly that.
   [MO] reaches the same with its default ``concat_elimination`` pass (Concat inputs share the
   output's scale). [MO] additionally quantizes a Resize input that follows a Conv partition
   (``_find_quantizable_kgen_partitions``); in DeepLab that Resize broadcasts ASPP's 1×1 pooled
   vector, a negligible tensor, so ours keeps it FP16 (no change: no fusion is missed).
8. **Q/DQ stay FP32 with Casts around them** in the mixed graph (see
   :func:`deeplab_trt.calibration.quantize.mixed_fp16`): opset 17 QuantizeLinear takes FP32
   only, and TensorRT fuses Cast→Q / DQ→Cast into the INT8 kernel's I/O. [MO]'s graph
   with ``high_precision_dtype='fp16'`` is opset 19 with FP16 scales (Q/DQ on FP16 tensors), which ONNX Runtime CPU is no proven
   oracle for (one session measured 4.1 % mIoU on it, a later one −0.74 points), while ours
   keeps every Q/DQ in FP32, which ORT CPU runs as it runs the FP32-rest graph.
9. **A pooling op (GlobalAveragePool, AveragePool, MaxPool) whose input is already quantized
   for another consumer and whose output is quantized reads that quantized input**: [TRT]
   fuses DQ → pool → Q into one quantized pooling layer (its figure 1, "a quantizable
   AveragePool layer is fused with a DQ layer and a Q layer"). Left reading the float tensor,
   the producer (a fused Conv) must write both the FP16 tensor for the pool and an INT8 copy
   for the other consumer, i.e. a separate Q kernel — the reformat rule 6 avoids. In DeepLab v3
   this is ASPP's image pooling on the backbone output (which also feeds ASPP's quantized
   Convs). [MO]: pooling ops are quantized when a neighbour is (``find_quantizable_nodes``).
   Pools whose input is not otherwise quantized (the SE blocks' pools, whose input also feeds a
   float Mul) are left alone: quantizing them would add exactly that extra Q.

A tensor feeding several quantized consumers gets one Q/DQ pair shared by all of them (one
scale per tensor, as TensorRT requires for fusion); consumers that stay float keep reading the
original tensor.

Weights are stored as int8 initializers with a per-channel ``DequantizeLinear(axis=0)``
(``weights="int8"``, default: 4x smaller files, what TensorRT documents as pre-quantized
weights) or as float initializers with a ``QuantizeLinear``/``DequantizeLinear`` pair
(``weights="qdq"``, what PyTorch QAT exports). TensorRT-RTX 1.7 parses and builds both
(``tests/test_calibration.py``).
"""

from __future__ import annotations

import fnmatch
from collections import defaultdict, deque
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from deeplab_trt.calibration.scales import quantize_weight, scale_from_amax, weight_scales
from deeplab_trt.runtime.errors import ToolkitError

QUANTIZED_OPS = ("Conv",)
#: Pooling ops TensorRT runs quantized when DQ → pool → Q surround them (rule 9).
POOLING_OPS = ("GlobalAveragePool", "AveragePool", "MaxPool")
#: Ops between a Conv and an Add that TensorRT still fuses into the Conv (BN is folded).
FUSIBLE_PASS_THROUGH = ("BatchNormalization", "Identity")
WEIGHT_MODES = ("int8", "qdq")
MIN_OPSET = 13  # per-channel DequantizeLinear (axis)


@dataclass
class QdqPlan:
    """Which tensors get Q/DQ and for which consumers; which Conv weights get quantized.

    ``activations``: tensor name → list of (node name, input index) that read the quantized
    value. ``weights``: Conv node name → name of its float weight tensor. ``float_convs``: Convs
    kept float (head or excluded), for the report.
    """

    activations: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    weights: dict[str, str] = field(default_factory=dict)
    residual_adds: list[str] = field(default_factory=list)
    float_convs: list[str] = field(default_factory=list)
    quantized_pools: list[str] = field(default_factory=list)  #: rule 9

    @property
    def tensors(self) -> list[str]:
        """Activation tensors that need a calibrated scale."""
        return list(self.activations)


class _Graph:
    """Producer/consumer/initializer lookups over an ONNX graph (names assigned where missing)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        used = {n.name for n in graph.node if n.name}
        for k, node in enumerate(graph.node):
            if not node.name:
                name = f"{node.op_type}_{k}"
                while name in used:
                    name += "_"
                node.name = name
                used.add(name)
        self.nodes = {n.name: n for n in graph.node}
        self.order = [n.name for n in graph.node]
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = defaultdict(list)
        for node in graph.node:
            for out in node.output:
                if out:
                    self.producer[out] = node
            for idx, inp in enumerate(node.input):
                if inp:
                    self.consumers[inp].append((node, idx))
        self.initializers = {t.name: t for t in graph.initializer}
        self.inputs = {i.name for i in graph.input}
        self.outputs = [o.name for o in graph.output]

    def constant(self, name: str) -> np.ndarray | None:
        """Value of ``name`` if it is an initializer, a Constant, or an Identity of one."""
        seen = 0
        while seen < 16:
            if name in self.initializers:
                return numpy_helper.to_array(self.initializers[name])
            node = self.producer.get(name)
            if node is None:
                return None
            if node.op_type == "Identity":
                name = node.input[0]
                seen += 1
                continue
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value":
                        return numpy_helper.to_array(attr.t)
            return None
        return None

    def is_constant(self, name: str) -> bool:
        return self.constant(name) is not None

    def ancestors(self, node: onnx.NodeProto) -> dict[str, int]:
        """Node name → shortest distance (in nodes) upwards from ``node`` (itself at 0)."""
        dist = {node.name: 0}
        queue = deque([node])
        while queue:
            cur = queue.popleft()
            for inp in cur.input:
                parent = self.producer.get(inp)
                if parent is not None and parent.name not in dist:
                    dist[parent.name] = dist[cur.name] + 1
                    queue.append(parent)
        return dist

    def backbone(self, tensor: str) -> onnx.NodeProto | None:
        """The Conv that produces ``tensor`` directly or through fusible pass-through ops."""
        node = self.producer.get(tensor)
        while node is not None and node.op_type in FUSIBLE_PASS_THROUGH:
            node = self.producer.get(node.input[0])
        return node if node is not None and node.op_type in QUANTIZED_OPS else None

    def reaches_output_without_conv(self, node: onnx.NodeProto) -> bool:
        """True when a graph output is reachable from ``node``'s outputs through non-Conv ops."""
        outputs = set(self.outputs)
        queue = deque(o for o in node.output if o)
        seen = set(queue)
        while queue:
            tensor = queue.popleft()
            if tensor in outputs:
                return True
            for consumer, _ in self.consumers.get(tensor, []):
                if consumer.op_type in QUANTIZED_OPS:
                    continue
                for out in consumer.output:
                    if out and out not in seen:
                        seen.add(out)
                        queue.append(out)
        return False


def _matches(name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def plan_qdq(model: onnx.ModelProto, exclude=(), quantize_head: bool = False) -> QdqPlan:
    """Decide the Q/DQ placement for ``model`` (names unnamed nodes in place; nothing else)."""
    g = _Graph(model)
    plan = QdqPlan()
    quantized_convs: set[str] = set()
    for name in g.order:
        node = g.nodes[name]
        if node.op_type not in QUANTIZED_OPS:
            continue
        weight = g.constant(node.input[1]) if len(node.input) > 1 else None
        if weight is None or weight.dtype not in (np.float32, np.float16, np.float64):
            continue  # dynamic or already-quantized weights: not ours to touch
        if _matches(name, exclude) or (not quantize_head and g.reaches_output_without_conv(node)):
            plan.float_convs.append(name)
            continue
        if g.is_constant(node.input[0]):
            continue
        quantized_convs.add(name)
        plan.weights[name] = node.input[1]
        plan.activations.setdefault(node.input[0], []).append((name, 0))

    for name in g.order:
        node = g.nodes[name]
        if node.op_type != "Add" or len(node.input) != 2 or _matches(name, exclude):
            continue
        a, b = node.input
        if g.is_constant(a) or g.is_constant(b) or a not in g.producer or b not in g.producer:
            continue
        bb = [g.backbone(a), g.backbone(b)]
        bb = [x if x is not None and x.name in quantized_convs else None for x in bb]
        if bb[0] is None and bb[1] is None:
            continue
        pa, pb = g.producer[a], g.producer[b]
        da, db = g.ancestors(pa), g.ancestors(pb)
        common = set(da) & set(db)
        if bb[0] is not None and bb[1] is not None:
            if bb[0].name == bb[1].name:
                continue
            lca = min(common, key=lambda n: (da[n] + db[n], n)) if common else None
            d0 = da[lca] if lca else 0
            d1 = db[lca] if lca else 0
            residual = 1 if d0 >= d1 else 0  # the longer path is the main (fused) branch
        else:
            main = 0 if bb[0] is not None else 1
            other = (pb, db) if main == 0 else (pa, da)
            # ConvNeXt-like: the other branch is computed from the backbone Conv itself
            if bb[main].name in other[1]:
                continue
            residual = 1 - main
        tensor = node.input[residual]
        plan.activations.setdefault(tensor, []).append((name, residual))
        plan.residual_adds.append(name)

    # Rule 9: a pool between two quantized tensors reads the quantized one (TensorRT fuses
    # DQ -> pool -> Q); decided after the Convs and Adds, whose placement defines both ends.
    for name in g.order:
        node = g.nodes[name]
        if node.op_type not in POOLING_OPS or _matches(name, exclude) or not node.input:
            continue
        if node.input[0] in plan.activations and node.output and node.output[0] in plan.activations:
            plan.activations[node.input[0]].append((name, 0))
            plan.quantized_pools.append(name)
    return plan


def _opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 0


def _unique(base: str, taken: set[str]) -> str:
    name, k = base, 1
    while name in taken:
        name = f"{base}_{k}"
        k += 1
    taken.add(name)
    return name


def _toposort(graph: onnx.GraphProto) -> None:
    """Stable topological order (Kahn), so inserted Q/DQ nodes precede their consumers."""
    nodes = list(graph.node)
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    producers = {}
    for k, node in enumerate(nodes):
        for out in node.output:
            producers[out] = k
    deps = [set() for _ in nodes]
    users = defaultdict(list)
    for k, node in enumerate(nodes):
        for inp in node.input:
            if inp not in available and inp in producers and producers[inp] != k:
                deps[k].add(producers[inp])
    for k, d in enumerate(deps):
        for p in d:
            users[p].append(k)
    import heapq

    ready = [k for k, d in enumerate(deps) if not d]
    heapq.heapify(ready)
    order = []
    remaining = [len(d) for d in deps]
    while ready:
        k = heapq.heappop(ready)
        order.append(k)
        for u in users[k]:
            remaining[u] -= 1
            if remaining[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        raise ToolkitError("Q/DQ pass: the graph has a cycle")
    del graph.node[:]
    graph.node.extend(nodes[k] for k in order)


def insert_qdq(model: onnx.ModelProto, plan: QdqPlan, amax: dict[str, float], weights: str = "int8") -> onnx.ModelProto:
    """A copy of ``model`` with Q/DQ nodes per ``plan``; ``amax``: activation tensor → threshold.

    Activation tensors of the plan missing from ``amax`` stay float (with their consumers).
    """
    if weights not in WEIGHT_MODES:
        raise ToolkitError(f"weight quantization {weights!r}: expected one of {', '.join(WEIGHT_MODES)}")
    if _opset(model) < MIN_OPSET:
        raise ToolkitError(
            f"model opset {_opset(model)}: per-channel Q/DQ needs opset >= {MIN_OPSET} (re-export with --opset 17)"
        )
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    g = _Graph(out)  # same naming as plan_qdq: both name unnamed nodes deterministically
    taken = {n.name for n in graph.node} | set(g.producer) | set(g.initializers) | g.inputs
    new_nodes: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []
    act_quantized: set[str] = set()  # Convs whose activation input got Q/DQ

    for tensor, users in plan.activations.items():
        if tensor not in amax:
            continue
        scale = _unique(f"{tensor}_scale", taken)
        zero = _unique(f"{tensor}_zero_point", taken)
        q_out = _unique(f"{tensor}_quantized", taken)
        dq_out = _unique(f"{tensor}_dequantized", taken)
        new_inits.append(numpy_helper.from_array(np.array(scale_from_amax(amax[tensor]), np.float32), scale))
        new_inits.append(numpy_helper.from_array(np.array(0, np.int8), zero))
        new_nodes.append(
            helper.make_node(
                "QuantizeLinear", [tensor, scale, zero], [q_out], name=_unique(f"{tensor}_QuantizeLinear", taken)
            )
        )
        new_nodes.append(
            helper.make_node(
                "DequantizeLinear", [q_out, scale, zero], [dq_out], name=_unique(f"{tensor}_DequantizeLinear", taken)
            )
        )
        for node_name, idx in users:
            g.nodes[node_name].input[idx] = dq_out
            if idx == 0 and g.nodes[node_name].op_type in QUANTIZED_OPS:
                act_quantized.add(node_name)

    weight_dq: dict[str, str] = {}  # float weight tensor → its DQ output (shared weights stay shared)
    for conv_name, wname in plan.weights.items():
        conv = g.nodes[conv_name]
        if conv_name not in act_quantized:
            continue  # activation left float (no scale): keep the weight float too
        if wname in weight_dq:
            conv.input[1] = weight_dq[wname]
            continue
        w = g.constant(wname)
        scales = weight_scales(w, axis=0)
        base = f"{conv_name}.weight"
        scale = _unique(f"{base}_scale", taken)
        zero = _unique(f"{base}_zero_point", taken)
        dq_out = _unique(f"{base}_dequantized", taken)
        new_inits.append(numpy_helper.from_array(scales, scale))
        new_inits.append(numpy_helper.from_array(np.zeros(scales.shape, np.int8), zero))
        if weights == "int8":
            q_name = _unique(f"{base}_int8", taken)
            new_inits.append(numpy_helper.from_array(quantize_weight(w, scales, axis=0), q_name))
            dq_in = q_name
        else:
            f_name = _unique(f"{base}_float", taken)
            new_inits.append(numpy_helper.from_array(np.asarray(w, np.float32), f_name))
            dq_in = _unique(f"{base}_quantized", taken)
            new_nodes.append(
                helper.make_node(
                    "QuantizeLinear",
                    [f_name, scale, zero],
                    [dq_in],
                    axis=0,
                    name=_unique(f"{base}_QuantizeLinear", taken),
                )
            )
        new_nodes.append(
            helper.make_node(
                "DequantizeLinear",
                [dq_in, scale, zero],
                [dq_out],
                axis=0,
                name=_unique(f"{base}_DequantizeLinear", taken),
            )
        )
        conv.input[1] = dq_out
        weight_dq[wname] = dq_out

    graph.node.extend(new_nodes)
    graph.initializer.extend(new_inits)
    _drop_unused(graph)
    _toposort(graph)
    return out


def _drop_unused(graph: onnx.GraphProto) -> None:
    """Remove initializers and Identity/Constant nodes nothing reads any more (old float weights)."""
    while True:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if n.op_type in ("Identity", "Constant") and not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [t for t in graph.initializer if t.name in used]
    if len(keep) != len(graph.initializer):
        dropped = {t.name for t in graph.initializer} - {t.name for t in keep}
        del graph.initializer[:]
        graph.initializer.extend(keep)
        inputs = [i for i in graph.input if i.name not in dropped]  # old-style initializer inputs
        del graph.input[:]
        graph.input.extend(inputs)
