"""The package's layers, checked on its import graph (docs/architecture.md draws the same picture).

The graph is built with ``ast`` from the source files: every ``import`` / ``from ... import`` of a
streamflame module, at module level, under ``if TYPE_CHECKING`` and inside functions alike
(``import-linter`` / ``grimp`` would do this, but they cannot be installed offline here). Checked:

* no import cycle among the package's modules;
* a module imports only modules of its own layer or of lower ones (:data:`LAYERS`, lowest first);
  fault injection and benchmarks (:data:`APART`) may import any layer, and no layer imports them;
* an import inside a function says why on its line or the line above (``# lazy: <reason>``: a slow
  import such as torch, kafka-python or pandas that only that path needs);
* every module is placed in the table (a new folder is a decision, made here and in the docs).

``test_a_violation_is_reported`` feeds fake edges to the same checks: they must fail.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "streamflame"

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("core", ("streamflame.core",)),
    ("model", ("streamflame.model",)),
    ("messages and config", ("streamflame.messages", "streamflame.config", "streamflame.alerts")),
    ("offline", ("streamflame.data", "streamflame.train", "streamflame.eval")),
    ("adapters", ("streamflame.adapters",)),
    ("pipeline", ("streamflame.pipeline",)),
    ("entry points", ("streamflame.tools", "streamflame.embedded", "streamflame.cli", "streamflame.__main__",
                      "streamflame.frame", "streamflame")),
]
"""Layer name -> module prefixes, lowest layer first. A module belongs to its longest matching prefix."""

APART: tuple[str, ...] = ("streamflame.faults", "streamflame.bench")
"""Fault injection and benchmarks: beside the layers, never imported by them."""

FACADE = {"SeriesForecaster": "streamflame.frame"}
"""``from streamflame import X``: the package's lazy ``__getattr__`` gives X from streamflame.frame
(these names) or from streamflame.model (the other names of ``streamflame.__all__``)."""

LAZY_NOT_YET_EXPLAINED: set[tuple[str, str]] = set()   # (src, dst) pairs waiting for their "# lazy:" reason


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    line: int
    inside_function: bool
    explained: bool  # a "# lazy:" comment on the import's line or the line above


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _resolve(name: str) -> str | None:
    """The module that ``name`` (a module, or a module plus an attribute) is, or lives in."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> set[str]:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            anchor = module.split(".") if is_package else module.split(".")[:-1]
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join(anchor + ([base] if base else []))
        names = []
        for a in node.names:
            if base == "streamflame" and f"streamflame.{a.name}" not in MODULES:
                names.append(FACADE.get(a.name, "streamflame.model"))
            else:
                names.append(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base)
    out = {_resolve(n) for n in names if n.split(".")[0] == "streamflame"}
    return {t for t in out if t and t != module}


def _edges_of(module: str, path: Path) -> list[Edge]:
    text = path.read_text()
    lines = text.splitlines()
    edges: list[Edge] = []

    def visit(node: ast.AST, inside: bool) -> None:
        for child in ast.iter_child_nodes(node):
            now_inside = inside or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                around = lines[max(0, child.lineno - 2): child.lineno]
                explained = any("# lazy:" in line for line in around)
                for dst in sorted(_targets(child, module, path.name == "__init__.py")):
                    edges.append(Edge(module, dst, child.lineno, now_inside, explained))
            visit(child, now_inside)

    visit(ast.parse(text), False)
    return edges


def import_graph() -> list[Edge]:
    return [e for m, p in MODULES.items() for e in _edges_of(m, p)]


def layer_of(module: str) -> tuple[int, str]:
    """(rank, layer name); rank len(LAYERS) for the modules apart. KeyError: not placed."""
    best: tuple[int, int, str] | None = None  # (prefix length, rank, name)
    table = [(i, name, prefixes) for i, (name, prefixes) in enumerate(LAYERS)] + [(len(LAYERS), "apart", APART)]
    for rank, name, prefixes in table:
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), rank, name)
    if best is None:
        raise KeyError(module)
    return best[1], best[2]


def layer_violations(edges: list[Edge]) -> list[str]:
    out = []
    for e in edges:
        (src_rank, src_layer), (dst_rank, dst_layer) = layer_of(e.src), layer_of(e.dst)
        if dst_rank > src_rank:
            out.append(f"{e.src} ({src_layer}) imports {e.dst} ({dst_layer}) at line {e.line}")
    return out


def cycles(edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.src, set()).add(e.dst)
        graph.setdefault(e.dst, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return found


def unexplained_lazy_imports(edges: list[Edge]) -> list[str]:
    return [f"{e.src} line {e.line}: imports {e.dst} inside a function without '# lazy: <reason>'"
            for e in edges if e.inside_function and not e.explained and (e.src, e.dst) not in LAZY_NOT_YET_EXPLAINED]


GRAPH = import_graph()


def test_the_graph_sees_the_package():
    # Guards the checks below against an empty or partial graph (a wrong path, a parser change).
    assert len(MODULES) > 60 and len(GRAPH) > 150
    assert any(e.src == "streamflame.pipeline.worker.worker" and e.dst == "streamflame.model" for e in GRAPH)
    assert any(e.inside_function for e in GRAPH)


def test_every_module_has_a_layer():
    unplaced = []
    for m in MODULES:
        try:
            layer_of(m)
        except KeyError:
            unplaced.append(m)
    assert not unplaced, f"place these modules in LAYERS or APART (and docs/architecture.md): {unplaced}"


def test_no_import_cycles():
    assert not cycles(GRAPH), "import cycles (module-level, TYPE_CHECKING or inside functions):\n" + "\n".join(
        " <-> ".join(c) for c in cycles(GRAPH))


def test_lower_layers_never_import_higher_ones():
    bad = layer_violations(GRAPH)
    assert not bad, "\n".join(bad)


def test_imports_inside_functions_say_why():
    bad = unexplained_lazy_imports(GRAPH)
    assert not bad, "\n".join(bad)


def test_the_not_yet_explained_list_holds_only_real_imports():
    real = {(e.src, e.dst) for e in GRAPH if e.inside_function and not e.explained}
    assert LAZY_NOT_YET_EXPLAINED <= real, sorted(LAZY_NOT_YET_EXPLAINED - real)


@pytest.mark.parametrize("src, dst, inside, check", [
    ("streamflame.core.constants", "streamflame.config", False, "layer"),        # core -> messages and config
    ("streamflame.messages.patch", "streamflame.pipeline.worker.worker", True, "layer"),   # even inside a function
    ("streamflame.adapters.kafka_io", "streamflame.pipeline.ingest.consumer", False, "layer"),  # adapter -> pipeline
    ("streamflame.pipeline.worker.batch", "streamflame.faults.chaos", False, "layer"),  # runtime -> fault injection
    ("streamflame.model.flame", "streamflame.messages", False, "layer"),         # model -> messages
    ("streamflame.messages.codec", "streamflame.messages.patch", False, "cycle"),   # patch imports codec
    ("streamflame.core.logs", "streamflame.core.constants", True, "lazy"),       # no "# lazy:" reason
])
def test_a_violation_is_reported(src, dst, inside, check):
    """The checks above, fed one fake edge each, must report it (they are not vacuous)."""
    fake = Edge(src, dst, 1, inside, False)
    if check == "layer":
        assert layer_violations(GRAPH + [fake]) == [f"{src} ({layer_of(src)[1]}) imports {dst} "
                                                    f"({layer_of(dst)[1]}) at line 1"]
    elif check == "cycle":
        assert any(e.src == dst and e.dst == src for e in GRAPH)  # the real edge the fake one closes
        assert [c for c in cycles(GRAPH + [fake])] == [sorted([src, dst])]
    else:
        assert unexplained_lazy_imports(GRAPH + [fake]) == [
            f"{src} line 1: imports {dst} inside a function without '# lazy: <reason>'"]


def kafka_python_imports(prefix: str) -> list[str]:
    """Modules under ``prefix`` that import kafka-python themselves (any level)."""
    out = []
    for m, path in MODULES.items():
        if m == prefix or m.startswith(prefix + "."):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
                out += [f"{m} line {node.lineno}: {n}" for n in names if n == "kafka" or n.startswith("kafka.")]
    return out


def test_the_pipeline_reaches_kafka_only_through_the_adapter():
    """The Kafka client sits behind streamflame.adapters.kafka_io (its Producer / Consumer
    interface, kafka-python by default): no pipeline module imports kafka-python itself."""
    assert kafka_python_imports("streamflame.adapters.kafka_io")  # the check sees imports where they are
    bad = kafka_python_imports("streamflame.pipeline")
    assert not bad, "\n".join(bad)


def test_one_patch_length_and_one_set_of_default_quantiles():
    """The model's config is the truth for the patch length; the pipeline's copy must agree (the
    worker also refuses a checkpoint that differs: test_worker_batch). Default quantile levels: one
    tuple in core; the model's and eval's names for it must be the same levels."""
    from streamflame.core.constants import DEFAULT_QUANTILES, PATCH_LEN
    from streamflame.eval.metrics import QUANTILES
    from streamflame.model import DEFAULT_QUANTILES as MODEL_QUANTILES
    from streamflame.model import ModelConfig

    assert ModelConfig().patch_len == PATCH_LEN
    assert tuple(MODEL_QUANTILES) == tuple(QUANTILES) == DEFAULT_QUANTILES
