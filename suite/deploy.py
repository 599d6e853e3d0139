"""Compiled batch-1 deployment: a layer's whole step (both matrices in their compressed form, the sparse part,
bias, gates and cell update) as one machine-code function, and a language model's whole greedy decoding loop
as another.

A compressed matrix describes its deployment form as data (``Structured.deploy_terms``: dense blocks, low-rank
pairs, Kronecker products, CSR parts; see ``compressors.terms``). This module writes the source of one numba
function per layer (or per model) that calls a small kernel per term, and compiles it with LLVM. Each step
reads only the stored tensors, once. The dense model gets the same compiler (its weights are one dense term),
so that compiled dense is one of the baselines every ratio is measured against.

Why numba: at batch 1 a compressed LSTM step is 10-30 small operations on a few hundred KB; eager PyTorch
pays microseconds of dispatch per op. Measured on one thread at hidden 650 (us per step; compile time):
kp at CF 25: eager 49.5, torch.compile (Inductor, max-autotune-no-cudagraphs) 63.7 (1.3 s), numba 15.4
(0.7 s); lmf at CF 25: 38.1, 49.4, 13.7; dense: addmv 353, torch.compile 325 (16 s), numba 220 (2.2 s).
Dynamo does not trace sparse CSR, and a C++ extension needs a build system at install time. numba (already a
dependency of the audio stack) compiles in-process in seconds, and its kernels are plain loops that LLVM
vectorizes. The gates use a rational tanh (max error 3e-7 against
float64), since a scalar libm call per gate element costs more than a compressed matrix product."""

from __future__ import annotations

import functools
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .compressors import registry
from .compressors.terms import Dense, Kron, LowRank, Sparse, Term


@functools.cache
def _nb():
    """numba, imported on first use (compiling is the only thing that needs it)."""
    import numba

    return numba


# --- kernels -------------------------------------------------------------------------------------------------
# Plain loops over float32 arrays; each adds its product into g (the gate pre-activations or the logits).

_TANH_P = (  # odd numerator and even denominator of a rational approximation of tanh on [-7.9, 7.9]
    4.89352455891786e-03,
    6.37261928875436e-04,
    1.48572235717979e-05,
    5.12229709037114e-08,
    -8.60467152213735e-11,
    2.00018790482477e-13,
    -2.76076847742355e-16,
)
_TANH_Q = (4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04, 1.19825839466702e-06)
_TANH_CLAMP = 7.90531110763549805  # beyond it tanh is 1 in float32


def _kernel_source() -> str:
    p = ", ".join(f"np.float32({c!r})" for c in _TANH_P)
    q = ", ".join(f"np.float32({c!r})" for c in _TANH_Q)
    return f'''
P1, P3, P5, P7, P9, P11, P13 = {p}
Q0, Q2, Q4, Q6 = {q}
CLAMP = np.float32({_TANH_CLAMP!r})
HALF = np.float32(0.5)


@njit(fastmath=True, error_model="numpy", inline="always")
def tanh(x):
    x = min(max(x, -CLAMP), CLAMP)
    x2 = x * x
    num = ((((((x2 * P13 + P11) * x2 + P9) * x2 + P7) * x2 + P5) * x2 + P3) * x2 + P1) * x
    return num / (((x2 * Q6 + Q4) * x2 + Q2) * x2 + Q0)


@njit(fastmath=True, error_model="numpy", inline="always")
def sigmoid(x):
    return HALF * tanh(HALF * x) + HALF


@njit(fastmath=True, error_model="numpy")
def mv(y, w, z):
    """y += w z, four rows at a time (one pass over z per four rows, the reductions amortized)."""
    m, n = w.shape
    i = 0
    while i + 4 <= m:
        a0 = a1 = a2 = a3 = np.float32(0.0)
        for j in range(n):
            zj = z[j]
            a0 += w[i, j] * zj
            a1 += w[i + 1, j] * zj
            a2 += w[i + 2, j] * zj
            a3 += w[i + 3, j] * zj
        y[i] += a0
        y[i + 1] += a1
        y[i + 2] += a2
        y[i + 3] += a3
        i += 4
    while i < m:
        a0 = np.float32(0.0)
        for j in range(n):
            a0 += w[i, j] * z[j]
        y[i] += a0
        i += 1


@njit(fastmath=True, error_model="numpy")
def dense(g, off, w, z):
    mv(g[off : off + w.shape[0]], w, z)


@njit(fastmath=True, error_model="numpy")
def lowrank(g, off, u, v, z):
    t = np.zeros(v.shape[0], np.float32)
    mv(t, v, z)
    mv(g[off : off + u.shape[0]], u, t)


@njit(fastmath=True, error_model="numpy")
def lowrank_rows(g, index, u, v, z):
    t = np.zeros(v.shape[0], np.float32)
    mv(t, v, z)
    y = np.zeros(u.shape[0], np.float32)
    mv(y, u, t)
    for i in range(y.shape[0]):
        g[index[i]] += y[i]


@njit(fastmath=True, error_model="numpy")
def kron(g, off, a, b, z, a_first):
    terms, m1, n1 = a.shape
    m2, n2 = b.shape[1], b.shape[2]
    if a_first:  # T^T (n2, m1) = A X's columns, one matrix-vector product of A each; then Y = T B^T
        xt = np.empty(n2 * n1, np.float32)
        for j in range(n2):
            for i in range(n1):
                xt[j * n1 + i] = z[i * n2 + j]
        tt = np.empty(n2 * m1, np.float32)
        for r in range(terms):
            tt[:] = 0
            for j in range(n2):
                mv(tt[j * m1 : (j + 1) * m1], a[r], xt[j * n1 : (j + 1) * n1])
            for p in range(m1):
                for q in range(m2):
                    acc = np.float32(0.0)
                    for j in range(n2):
                        acc += tt[j * m1 + p] * b[r, q, j]
                    g[off + p * m2 + q] += acc
    else:  # T^T (m2, n1) = B X^T; then column q of Y is A T^T[q], one matrix-vector product of A each
        tt = np.empty(m2 * n1, np.float32)
        col = np.empty(m1, np.float32)
        for r in range(terms):
            for q in range(m2):
                for i in range(n1):
                    acc = np.float32(0.0)
                    for j in range(n2):
                        acc += b[r, q, j] * z[i * n2 + j]
                    tt[q * n1 + i] = acc
            for q in range(m2):
                col[:] = 0
                mv(col, a[r], tt[q * n1 : (q + 1) * n1])
                for p in range(m1):
                    g[off + p * m2 + q] += col[p]


@njit(error_model="numpy")
def csr(g, crow, col, val, z):
    """Row by row, two accumulators (the adds of a row are a dependency chain). The indices are unsigned:
    numba checks a signed index for wraparound on every access, which doubled the time."""
    for i in range(crow.shape[0] - 1):
        a0 = a1 = np.float32(0.0)
        k, end = crow[i], crow[i + 1]
        while k + 1 < end:
            a0 += val[k] * z[col[k]]
            a1 += val[k + 1] * z[col[k + 1]]
            k += 2
        if k < end:
            a0 += val[k] * z[col[k]]
        g[i] += a0 + a1


@njit(fastmath=True, error_model="numpy")
def cell(g, c):
    """nn.LSTM's cell update from the (4H,) pre-activations, gate order i, f, g, o: the new (h, c)."""
    n = c.shape[0]
    h2 = np.empty(n, np.float32)
    c2 = np.empty(n, np.float32)
    for k in range(n):
        ck = sigmoid(g[n + k]) * c[k] + sigmoid(g[k]) * tanh(g[2 * n + k])
        c2[k] = ck
        h2[k] = sigmoid(g[3 * n + k]) * tanh(ck)
    return h2, c2


@njit(fastmath=True, error_model="numpy")
def argmax(y):
    best = 0
    for i in range(1, y.shape[0]):
        if y[i] > y[best]:
            best = i
    return best
'''


def _kron_source(n2: int) -> str:
    """A kernel for a Kronecker term with X = z.view(n1, n2) taken as (A X) B^T, specialized to n2: each pair of
    rows of A is read once against all n2 columns of X (2 n2 running sums), so A is read once per step."""
    rows = 2 if n2 > 1 else 4
    sums = [[f"s{p}_{j}" for j in range(n2)] for p in range(rows)]
    body = [
        f"def kron_a{n2}(g, off, a, b, z):",
        "    terms, m1, n1 = a.shape",
        "    m2 = b.shape[1]",
        f"    xt = np.empty({n2} * n1, np.float32)",
        f"    for j in range({n2}):",
        "        for i in range(n1):",
        f"            xt[j * n1 + i] = z[i * {n2} + j]",
        f"    t = np.empty(({n2}, m1), np.float32)",
        "    for r in range(terms):",
        "        ar = a[r]",
        "        p = 0",
        f"        while p + {rows} <= m1:",
        f"            {' = '.join(x for row in sums for x in row)} = np.float32(0.0)",
        "            for i in range(n1):",
        *[f"                x{j} = xt[{j} * n1 + i]" for j in range(n2)],
        *[f"                a{q} = ar[p + {q}, i]" for q in range(rows)],
        *[f"                {sums[q][j]} += a{q} * x{j}" for q in range(rows) for j in range(n2)],
        *[f"            t[{j}, p + {q}] = {sums[q][j]}" for q in range(rows) for j in range(n2)],
        f"            p += {rows}",
        "        while p < m1:",
        f"            for j in range({n2}):",
        "                acc = np.float32(0.0)",
        "                for i in range(n1):",
        "                    acc += ar[p, i] * xt[j * n1 + i]",
        "                t[j, p] = acc",
        "            p += 1",
        "        for p in range(m1):",
        "            for q in range(m2):",
        "                acc = np.float32(0.0)",
        f"                for j in range({n2}):",
        "                    acc += t[j, p] * b[r, q, j]",
        "                g[off + p * m2 + q] += acc",
    ]
    return '@njit(fastmath=True, error_model="numpy")\n' + "\n".join(body) + "\n"


#: the widest X (n2 columns) a specialized Kronecker kernel is written for; wider ones take ``kron``
KRON_SPECIALIZED = 8


def _kron_kernel(n2: int) -> str:
    """The name of the specialized (A X) B^T kernel for n2, compiled into the kernels' namespace on first use."""
    ns, name = _kernels(), f"kron_a{n2}"
    if name not in ns:
        exec(compile(_kron_source(n2), f"<suite.deploy {name}>", "exec"), ns)
    return name


@functools.cache
def _kernels() -> dict:
    """The kernels' namespace, compiled lazily, once per process."""
    namespace = {"np": np, "njit": _nb().njit}
    exec(compile(_kernel_source(), "<suite.deploy kernels>", "exec"), namespace)
    return namespace


# --- programs ------------------------------------------------------------------------------------------------


def _np(t: Tensor, dtype=np.float32) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy(), dtype=dtype)


@dataclass
class Program:
    """Source lines and the arrays they name, written term by term."""

    lines: list[str] = field(default_factory=list)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    macs: int = 0
    """Multiply-adds of one pass (the cell update not counted)."""

    @property
    def nbytes(self) -> int:
        """Bytes of the tensors one pass reads (each once)."""
        return sum(a.nbytes for a in self.arrays.values())

    def array(self, a: np.ndarray) -> str:
        name = f"a{len(self.arrays)}"
        self.arrays[name] = a
        return name

    def add(self, g: str, term: Term, z: str, indent: str) -> None:
        """One term's product of ``z`` added into ``g``."""
        self.macs += term_macs(term)
        if isinstance(term, Dense):
            call = f"dense({g}, {term.offset}, {self.array(_np(term.w))}, {z})"
        elif isinstance(term, LowRank):
            u, v = self.array(_np(term.u)), self.array(_np(term.v))
            if term.index is None:
                call = f"lowrank({g}, {term.offset}, {u}, {v}, {z})"
            else:
                index = self.array(_np(term.index, np.uint32))
                call = f"lowrank_rows({g}, {index}, {u}, {v}, {z})"
        elif isinstance(term, Kron):
            a, b = self.array(_np(term.a)), self.array(_np(term.b))
            n2 = term.b.shape[2]
            if term.a_first and n2 <= KRON_SPECIALIZED:
                call = f"{_kron_kernel(n2)}({g}, {term.offset}, {a}, {b}, {z})"
            else:
                call = f"kron({g}, {term.offset}, {a}, {b}, {z}, {term.a_first})"
        elif isinstance(term, Sparse):
            crow, col = term.csr.crow_indices(), term.csr.col_indices()
            names = [self.array(_np(crow, np.uint32)), self.array(_np(col, np.uint32))]
            names.append(self.array(_np(term.csr.values())))
            call = f"csr({g}, {', '.join(names)}, {z})"
        else:
            raise TypeError(f"no kernel for deployment term {type(term).__name__}")
        self.lines.append(indent + call)

    def lstm_layer(self, parts: LayerParts, x: str, h: str, c: str, indent: str) -> None:
        """The layer's step from (x, h, c) to the new (h, c), under the same names."""
        g = self.array(parts.bias)
        self.lines.append(f"{indent}g = {g}.copy()")
        for term in parts.ih:
            self.add("g", term, x, indent)
        for term in parts.hh:
            self.add("g", term, h, indent)
        if parts.sparse is not None:
            self.lines.append(f"{indent}xh = np.concatenate(({x}, {h}))")
            self.add("g", Sparse(parts.sparse), "xh", indent)
        self.lines.append(f"{indent}{h}, {c} = cell(g, {c})")

    def compile(self, header: str, body_end: list[str], name: str):
        args = ", ".join(self.arrays)
        src = "\n".join([f"def {name}({header}, {args}):", *self.lines, *body_end])
        ns = dict(_kernels())
        exec(compile(src, f"<suite.deploy {name}>", "exec"), ns)
        return _nb().njit(fastmath=True, error_model="numpy")(ns[name]), src


def term_macs(term: Term) -> int:
    """Multiply-adds of one term's product with a vector, in the order the kernel takes."""
    if isinstance(term, Dense):
        return term.w.numel()
    if isinstance(term, LowRank):
        return term.u.numel() + term.v.numel()
    if isinstance(term, Kron):
        r, m1, n1 = term.a.shape
        m2, n2 = term.b.shape[1:]
        return r * (m1 * n1 * n2 + m1 * n2 * m2 if term.a_first else n1 * n2 * m2 + m1 * n1 * m2)
    return term.csr.values().numel()


@dataclass
class LayerParts:
    """One LSTM layer's deployment: the terms of W_ih (on x) and W_hh (on h) without their sparse parts, the
    sparse parts of both side by side as one CSR [D_ih | D_hh] on [x; h] (or None), the summed bias."""

    ih: list[Term]
    hh: list[Term]
    sparse: Tensor | None
    bias: np.ndarray


def _terms(module: nn.Module, name: str) -> list[Term] | None:
    """The deployment terms of ``module``'s weight ``name``: one dense term when it is not compressed."""
    if parametrize.is_parametrized(module, name):
        return registry.deployed_terms(module, name)
    return [Dense(getattr(module, name).detach())]


def layer_parts(lstm: nn.LSTM, layer: int = 0) -> LayerParts | None:
    """The compiled form of one layer of ``lstm`` (dense or compressed), or None when a matrix's deployment
    form has no kernel here (``deploy_terms`` is None)."""
    names = (f"weight_ih_l{layer}", f"weight_hh_l{layer}")
    found = [_terms(lstm, name) for name in names]
    if any(f is None for f in found):
        return None
    structured = [[t for t in f if not isinstance(t, Sparse)] for f in found]
    sparse = [next((t.csr for t in f if isinstance(t, Sparse)), None) for f in found]
    bias = getattr(lstm, f"bias_ih_l{layer}") + getattr(lstm, f"bias_hh_l{layer}")
    shapes = [tuple(getattr(lstm, n).shape) for n in names]
    fused = layer_csr(sparse, shapes) if any(s is not None for s in sparse) else None
    return LayerParts(structured[0], structured[1], fused, _np(bias))


def layer_csr(parts: list[Tensor | None], shapes: list[tuple[int, int]]) -> Tensor:
    """The sparse parts of a layer's matrices side by side, [D_ih | D_hh], as one int32 CSR matrix (a
    missing part is empty). It stores one set of row pointers instead of two, so it never holds more than
    the per-matrix accounting counts."""
    device = next(p.device for p in parts if p is not None)
    blocks = [
        p.to_dense() if p is not None else torch.zeros(shape, device=device)
        for p, shape in zip(parts, shapes)
    ]
    csr = torch.cat(blocks, 1).to_sparse_csr()  # (4H, in + H)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(
            csr.crow_indices().int(), csr.col_indices().int(), csr.values(), csr.shape
        )


@dataclass
class CompiledStep:
    """A compiled batch-1 LSTM layer step: ``step(x, h, c) -> (h, c)`` on float32 numpy vectors.
    ``compile_s``: the time to compile it, first call included (reported apart from the step's time)."""

    fn: object
    arrays: tuple
    compile_s: float
    source: str
    macs: int
    nbytes: int

    def __call__(self, x: np.ndarray, h: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.fn(x, h, c, *self.arrays)


def compile_step(lstm: nn.LSTM, layer: int = 0) -> CompiledStep | None:
    """One layer of ``lstm`` as a compiled step, or None when its form has no kernel here."""
    parts = layer_parts(lstm, layer)
    if parts is None:
        return None
    prog = Program()
    prog.lstm_layer(parts, "x", "h", "c", "    ")
    t0 = time.perf_counter()
    fn, src = prog.compile("x, h, c", ["    return h, c"], "step")
    step = CompiledStep(fn, tuple(prog.arrays.values()), 0.0, src, prog.macs, prog.nbytes)
    zeros = np.zeros(lstm.input_size, np.float32), *(np.zeros(lstm.hidden_size, np.float32),) * 2
    step(*zeros)  # numba compiles on the first call
    step.compile_s = time.perf_counter() - t0
    return step


@dataclass
class CompiledGenerator:
    """A language model's greedy decoding loop compiled whole (embedding row, every LSTM layer, softmax,
    argmax): ``generate(token, n) -> (tokens, last logits)``, starting from a zero state."""

    fn: object
    arrays: tuple
    layers: int
    hidden: int
    compile_s: float
    source: str
    macs: int
    nbytes: int

    def __call__(self, token: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        zeros = np.zeros((self.layers, self.hidden), np.float32)
        return self.fn(token, n, zeros, zeros.copy(), *self.arrays)


def compile_generator(model: nn.Module) -> CompiledGenerator | None:
    """The greedy decoding loop of an ``LSTMLanguageModel`` (embedding, nn.LSTM, decoder), compiled; None when
    a part has no kernel here (a compressed embedding, tied weights, a form without terms)."""
    emb, lstm, dec = model.embedding, model.lstm, model.decoder
    if parametrize.is_parametrized(emb) or getattr(model, "tie_weights", False):
        return None
    layers = [layer_parts(lstm, k) for k in range(lstm.num_layers)]
    out_terms = _terms(dec, "weight")
    if out_terms is None or any(p is None for p in layers):
        return None
    prog = Program()
    table = prog.array(_np(emb.weight))
    dbias = prog.array(_np(dec.bias) if dec.bias is not None else np.zeros(dec.out_features, np.float32))
    body = prog.lines
    body += ["    out = np.empty(n, np.int64)", f"    y = {dbias}.copy()"]
    for k in range(len(layers)):
        body += [f"    h{k} = hs[{k}].copy()", f"    c{k} = cs[{k}].copy()"]
    body += ["    for t in range(n):", f"        x = {table}[token]"]
    for k, parts in enumerate(layers):
        prog.lstm_layer(parts, "x" if k == 0 else f"h{k - 1}", f"h{k}", f"c{k}", "        ")
    body.append(f"        y = {dbias}.copy()")
    for term in out_terms:
        prog.add("y", term, f"h{len(layers) - 1}", "        ")
    body += ["        token = argmax(y)", "        out[t] = token"]
    t0 = time.perf_counter()
    fn, src = prog.compile("token, n, hs, cs", ["    return out, y"], "generate")
    row = prog.arrays[table]  # one row of the embedding is read per token, not the table
    nbytes = prog.nbytes - row.nbytes + row.shape[1] * row.itemsize
    gen = CompiledGenerator(
        fn, tuple(prog.arrays.values()), len(layers), lstm.hidden_size, 0.0, src, prog.macs, nbytes
    )
    gen(0, 1)  # numba compiles on the first call
    gen.compile_s = time.perf_counter() - t0
    return gen
