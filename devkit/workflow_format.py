"""Conversion between ComfyUI's API-format prompts and the UI format its editor saves (nodes, links,
widgets_values), using the node definitions of a running ComfyUI. Used to write the example workflows'
UI twins and to check that each twin describes the same graph."""

from __future__ import annotations

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}
SEED_INPUTS = {"seed", "noise_seed"}  # the editor adds a "control after generate" widget value after these


def _inputs(node_class) -> list[tuple[str, object]]:
    spec = node_class.INPUT_TYPES()
    return list(spec.get("required", {}).items()) + list(spec.get("optional", {}).items())


def _is_widget(type_spec) -> bool:
    kind = type_spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _depth(api: dict, node_id: str, memo: dict) -> int:
    if node_id not in memo:
        parents = [v[0] for v in api[node_id]["inputs"].values() if isinstance(v, list)]
        memo[node_id] = 1 + max((_depth(api, p, memo) for p in parents), default=-1)
    return memo[node_id]


# Room under the widgets of a node that shows images after a run (Save Image, Preview Image): both front ends grow
# such a node to about 220 px below its widgets for its images, so it is laid out at that size from the start and
# never grows into the node below it.
IMAGE_ROOM = 240


def _shows_images(node_class) -> bool:
    return bool(getattr(node_class, "OUTPUT_NODE", False)) and any(spec[0] == "IMAGE"
                                                                   for _, spec in _inputs(node_class))


def _height(node_class, inputs: list, widget_count: int) -> int:
    """Roughly what the editor computes: a row per slot and widget, more for multiline text boxes, and the room
    an image-showing node takes once it shows its images."""
    multiline = sum(1 for _, spec in _inputs(node_class)
                    if spec[0] == "STRING" and len(spec) > 1 and spec[1].get("multiline"))
    slots = max(len(inputs), len(node_class.RETURN_TYPES))
    return 40 + 22 * slots + 24 * widget_count + 70 * multiline + (IMAGE_ROOM if _shows_images(node_class) else 0)


def api_to_ui(api: dict, node_classes: dict) -> dict:
    ids = {node_id: index + 1 for index, node_id in enumerate(api)}
    links, nodes = [], []
    outgoing: dict[tuple[int, int], list[int]] = {}
    depth_memo: dict = {}
    column_tops: dict[int, int] = {}
    for node_id, node in api.items():
        cls = node_classes[node["class_type"]]
        inputs, widgets = [], []
        for name, type_spec in _inputs(cls):
            value = node["inputs"].get(name)
            if _is_widget(type_spec) and not isinstance(value, list):
                widgets.append(value)
                if name in SEED_INPUTS and type_spec[0] == "INT":
                    widgets.append("fixed")
                continue
            link_id = None
            if isinstance(value, list):
                link_id = len(links) + 1
                source = ids[value[0]]
                source_type = node_classes[api[value[0]]["class_type"]].RETURN_TYPES[value[1]]
                links.append([link_id, source, value[1], ids[node_id], len(inputs), source_type])
                outgoing.setdefault((source, value[1]), []).append(link_id)
            entry = {"name": name, "type": type_spec[0] if isinstance(type_spec[0], str) else "COMBO", "link": link_id}
            if _is_widget(type_spec):
                # A widget fed by a link, as the editor saves one: it keeps its place (and a value) among the
                # widget values, which the editor assigns by position.
                entry["widget"] = {"name": name}
                widgets.append(type_spec[1].get("default", "") if len(type_spec) > 1 else "")
            inputs.append(entry)
        column = _depth(api, node_id, depth_memo)
        top = column_tops.get(column, 60)
        height = _height(cls, inputs, len(widgets))
        # SPARE nodes grow a panel (loss curve / adapter details) under their widgets when they run.
        column_tops[column] = top + height + (140 if node["class_type"].startswith("Spare") else 50)
        entry = {"id": ids[node_id], "type": node["class_type"], "pos": [60 + 420 * column, top],
                 "size": [380, height], "flags": {}, "order": 0, "mode": 0, "inputs": inputs,
                 "properties": {"Node name for S&R": node["class_type"]}, "widgets_values": widgets}
        title = node.get("_meta", {}).get("title")
        if title:
            entry["title"] = title
        nodes.append(entry)
    for entry in nodes:
        cls = node_classes[entry["type"]]
        names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
        entry["outputs"] = [{"name": name, "type": kind, "links": outgoing.get((entry["id"], slot), []),
                             "slot_index": slot}
                            for slot, (name, kind) in enumerate(zip(names, cls.RETURN_TYPES, strict=True))]
    order = sorted(nodes, key=lambda n: _depth(api, list(api)[n["id"] - 1], depth_memo))
    for index, entry in enumerate(order):
        entry["order"] = index
    return {"last_node_id": len(nodes), "last_link_id": len(links), "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {}, "version": 0.4}


def ui_to_api(ui: dict, node_classes: dict) -> dict:
    """What the editor would queue for this UI workflow (widget values in input order, links resolved)."""
    links = {link[0]: link for link in ui["links"]}
    api = {}
    for node in ui["nodes"]:
        cls = node_classes[node["type"]]
        linked = {i["name"]: i["link"] for i in node.get("inputs", []) if i.get("link") is not None}
        values = iter(node.get("widgets_values", []))
        inputs = {}
        for name, type_spec in _inputs(cls):
            if name in linked:
                link = links[linked[name]]
                inputs[name] = [str(link[1]), link[2]]
                if _is_widget(type_spec):
                    next(values)  # a linked widget keeps its place among the widget values
            elif _is_widget(type_spec):
                inputs[name] = next(values)
                if name in SEED_INPUTS and type_spec[0] == "INT":
                    next(values)
        api[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return api
