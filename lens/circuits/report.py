"""Pictures and text of a circuit: the graph laid out by layer (networkx), and a Markdown table of its edges.

The plot collapses receivers onto their nodes (an edge into 'L5H1.q' is drawn into 'L5H1', its line
style saying which input: q solid, k dashed, v dotted, MLP/logits solid) and draws the strongest
`max_edges` edges: colour is the sign of the score (red: corrupting the edge lowers the metric, so with a
metric that is higher on clean prompts the edge carries the behaviour; blue: raises it), width its size. Layers run bottom (input) to top
(logits), so the picture reads like the forward pass.
"""

from __future__ import annotations

from lens.circuits.circuit import Circuit
from lens.plots import _save, _short, plt

STYLES = {"q": "solid", "k": "dashed", "v": "dotted", "": "solid"}


def node_layer(graph, name: str) -> int:
    if name == "input":
        return -1
    if name == "logits":
        return graph.n_layers
    return int(name[1:].split("H")[0].split(".")[0])


def plot_circuit(circuit: Circuit, path, max_edges: int = 60, title: str = "") -> str:
    """The circuit's strongest edges as a layered graph; returns the PNG's absolute path."""
    import networkx as nx

    graph = circuit.graph
    edges = circuit.edge_list()[:max_edges]
    dag = nx.DiGraph()
    for sender, receiver, score in edges:
        node, _, part = receiver.partition(".")
        if part == "mlp" or receiver == "logits":
            node, part = receiver, ""
        elif "KV" in node:  # a shared key/value input: drawn into the group's first head
            layer, group = node[1:].split("KV")
            node = f"L{layer}H{int(group) * (graph.n_heads // graph.n_kv_heads)}"
        for name in (sender, node):
            dag.add_node(name, layer=node_layer(graph, name))
        prior = dag.edges[sender, node]["score"] if dag.has_edge(sender, node) else 0.0
        if abs(score or 0.0) >= abs(prior):
            dag.add_edge(sender, node, score=score or 0.0, part=part)
    fig, ax = plt.subplots(figsize=(12, 9), layout="constrained")
    if dag.number_of_nodes():
        pos = nx.multipartite_layout(dag, subset_key="layer", align="horizontal", scale=1.0)
        biggest = max(abs(d["score"]) for *_, d in dag.edges(data=True)) or 1.0
        for part, style in STYLES.items():
            chosen = [(u, v) for u, v, d in dag.edges(data=True) if d["part"] == part]
            if not chosen:
                continue
            scores = [dag.edges[e]["score"] for e in chosen]
            nx.draw_networkx_edges(dag, pos, edgelist=chosen, ax=ax, style=style, arrows=True, arrowsize=8,
                                   width=[0.6 + 3.4 * abs(s) / biggest for s in scores],
                                   edge_color=["#c0392b" if s < 0 else "#2e6fb7" for s in scores], alpha=0.75,
                                   connectionstyle="arc3,rad=0.08", node_size=900)
        colours = ["#f4d03f" if n in ("input", "logits") else "#a9dfbf" if n.endswith("mlp") else "#d6eaf8"
                   for n in dag.nodes]
        nx.draw_networkx_nodes(dag, pos, ax=ax, node_color=colours, node_size=900, edgecolors="#555555")
        nx.draw_networkx_labels(dag, pos, ax=ax, font_size=7)
    ax.set_axis_off()
    shown = f"the {len(edges)} strongest of {circuit.n_edges} edges" if circuit.n_edges > len(edges) \
        else f"{circuit.n_edges} edges"
    ax.set_title(_short(f"{title}\n{shown}, layers bottom → top\nred: corrupting the edge lowers the metric, "
                        f"blue: raises it; into q solid, k dashed, v dotted".strip(), limit=100), fontsize=10)
    return _save(fig, path)


def edges_markdown(circuit: Circuit, n: int = 20) -> str:
    rows = ["| edge | score |", "|---|---|"]
    rows += [f"| {s} → {r} | {score:+.4f} |" if score is not None else f"| {s} → {r} | |"
             for s, r, score in circuit.edge_list()[:n]]
    return "\n".join(rows)
