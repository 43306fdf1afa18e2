// SPARE web extension: live training progress, adapter details on nodes, and a library of erasure adapters.
// Plain ES module served through WEB_DIRECTORY; works on the legacy front end and the current one.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const TRAIN_NODE = "SpareTrainAdapter";
const SAVE_NODE = "SpareSaveAdapter";
const ADAPTER_NODES = new Set(["SpareTrainAdapter", "SpareApplyErasure", "SpareRemoveErasure", "SpareLoadAdapter"]);
const PANEL_HEIGHT = 86;
const PANEL_MIN_WIDTH = 240;
const LOSS_WIDGET = "spare_loss_curve";
const LOSS_COLOUR = "#5a9bd5";

function chain(prototype, method, extra) {
  const original = prototype[method];
  prototype[method] = function () {
    const result = original?.apply(this, arguments);
    extra.apply(this, arguments);
    return result;
  };
}

function growFor(node, key) {
  // Reserve room under the widgets once, so the drawing never covers them.
  if (node[key]) return;
  node[key] = true;
  node.setSize([node.size[0], node.size[1] + PANEL_HEIGHT]);
}

export function adapterSummary(info) {
  // Text lines for an adapter description from the server; copes with missing or malformed metadata.
  if (!info || typeof info !== "object") return ["no adapter details"];
  if (info.is_spare === false && !(info.forget_prompts || []).length) return ["LoRA without SPARE metadata"];
  const forget = info.concept ? String(info.concept)
    : Array.isArray(info.forget_prompts) ? info.forget_prompts.join(" | ") : String(info.forget_prompts ?? "?");
  const lines = severalConcepts(info)
    ? info.concepts.map(([concept, surrogate]) => `erases: ${concept} → ${surrogate || "(unconditional)"}`)
    : [`erases: ${forget || "?"}`, ...surrogateLines(info).map((line) => `→ ${line}`)];
  if (Array.isArray(info.neighbours) && info.neighbours.length) {
    lines.push(`keeps neighbours: ${info.neighbours.map(String).join(", ")}`);
  }
  if (typeof info.gap_closed === "number") {
    const drift = typeof info.retain_drift === "number" ? `, retain drift ${info.retain_drift.toFixed(3)}` : "";
    const gap = `${Math.round(info.gap_closed * 100)} % of the concept gap closed${drift}`;
    // Files trained before the verdict existed show the per-draw figure, and files before that only the gap
    // closed. Two lines: the node draws 70 characters a line.
    if (typeof info.verdict === "string" && typeof info.verdict_share === "number") {
      lines.push(`verdict: ${info.verdict} (${Math.round(info.verdict_share * 100)} % of held-out draws nearer the surrogate)`);
      lines.push(`  ${gap}`);
    } else if (typeof info.nearer_surrogate === "number") {
      lines.push(`erasure check: ${Math.round(info.nearer_surrogate * 100)} % of held-out draws nearer the surrogate`);
      lines.push(`  ${gap}`);
    } else {
      lines.push(`erasure check: ${gap}`);
    }
  }
  const facts = [];
  if (info.rank != null) facts.push(`rank ${info.rank}`);
  if (info.steps_done != null) facts.push(`${info.steps_done} steps`);
  else if (info.steps != null) facts.push(`${info.steps} steps`);
  if (info.base_model) facts.push(String(info.base_model));
  if (info.created) facts.push(String(info.created).slice(0, 10));
  if (facts.length) lines.push(facts.join(" · "));
  return lines;
}

function severalConcepts(info) {
  // An adapter trained on several "concept -> surrogate" lines: one line each, concept beside its surrogate.
  return Array.isArray(info.concepts) && info.concepts.length > 1
    && info.concepts.every((pair) => Array.isArray(pair) && pair.length === 2);
}

export function surrogateLines(info) {
  // One entry per surrogate line: a full-prompt adapter may pair each forget prompt with its own surrogate.
  const text = info.concept ? info.surrogate_concept : info.surrogate_prompt;
  const lines = String(text ?? "").split("\n").map((line) => line.trim()).filter(Boolean);
  return lines.length ? lines : ["(unconditional)"];
}

function drawLines(ctx, node, lines, top) {
  ctx.save();
  ctx.fillStyle = "#ddd";
  ctx.font = "11px sans-serif";
  lines.forEach((line, i) => ctx.fillText(line.slice(0, 70), 8, top + 14 * (i + 1)));
  ctx.restore();
}

function drawLossCurve(ctx, progress, left, top, width) {
  const height = PANEL_HEIGHT - 26;
  ctx.save();
  ctx.fillStyle = "#222";
  ctx.fillRect(left, top + 4, width, height);
  const losses = progress?.losses ?? [];
  if (losses.length > 1) {
    const low = Math.min(...losses), high = Math.max(...losses), span = high - low || 1;
    ctx.strokeStyle = LOSS_COLOUR;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    losses.forEach((loss, i) => {
      const x = left + (width * i) / (progress.total - 1 || 1);
      const y = top + 4 + height - (height * (loss - low)) / span;
      i ? ctx.lineTo(x, y) : ctx.moveTo(x, y);
    });
    ctx.stroke();
  }
  ctx.fillStyle = "#ddd";
  ctx.font = "11px sans-serif";
  let text = "loss curve: shown here while the adapter trains";
  if (progress) {
    const last = losses[losses.length - 1];
    // The latest erasure check as a verdict (the panel has room for about 70 characters); the gap closed only
    // where no verdict came (a server older than the verdict).
    const check = progress.verdict != null && progress.verdictShare != null
      ? `   ${progress.verdict}: ${Math.round(progress.verdictShare * 100)} % nearer surrogate`
      : progress.gapClosed == null ? "" : `   gap closed ${Math.round(progress.gapClosed * 100)} %`;
    text = `step ${progress.step} / ${progress.total}   loss ${last?.toExponential(2) ?? "-"}${check}`;
  }
  ctx.fillText(text, left, top + height + 18);
  ctx.restore();
}

function addLossPanel(node) {
  // A widget of its own, so the node's layout gives the curve fixed room below the other widgets instead of
  // drawing over them (text boxes take whatever height a node has left). It holds no value and is not sent.
  if (node.widgets?.some((w) => w.name === LOSS_WIDGET)) return;
  const widget = {
    name: LOSS_WIDGET,
    type: LOSS_WIDGET,
    value: null,
    serialize: false,
    options: { serialize: false },
    // A fixed minimum width: returning the node's own width would let some layouts widen the node every frame.
    computeSize: () => [PANEL_MIN_WIDTH, PANEL_HEIGHT],
    draw(ctx, drawnNode, width, y) {
      this.last_y = y;
      drawLossCurve(ctx, drawnNode.spareProgress, 15, y, width - 30);
    },
  };
  if (node.addCustomWidget) node.addCustomWidget(widget);
  else (node.widgets ??= []).push(widget);
  fitHeight(node);
}

function fitHeight(node) {
  const needed = node.computeSize?.()[1];
  if (needed && node.size[1] < needed) node.setSize([node.size[0], needed]);
}

app.registerExtension({
  name: "spare.trainingProgress",
  setup() {
    api.addEventListener("spare.progress", ({ detail }) => {
      const node = app.graph?.getNodeById(Number(detail?.node));
      if (!node || node.comfyClass !== TRAIN_NODE) return;
      if (!node.spareProgress || detail.step <= node.spareProgress.step) {
        node.spareProgress = { step: 0, total: detail.total, losses: [] };
      }
      node.spareProgress.step = detail.step;
      node.spareProgress.total = detail.total;
      node.spareProgress.losses.push(Number(detail.loss));
      // The held-out erasure check arrives every few steps: share of the way from the concept to its target closed.
      if (typeof detail.gap_closed === "number") node.spareProgress.gapClosed = detail.gap_closed;
      if (typeof detail.verdict === "string") {
        node.spareProgress.verdict = detail.verdict;
        node.spareProgress.verdictShare = detail.verdict_share;
      }
      node.setDirtyCanvas(true, true);
    });
  },
  beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== TRAIN_NODE) return;
    chain(nodeType.prototype, "onNodeCreated", function () {
      addLossPanel(this);
    });
    chain(nodeType.prototype, "onConfigure", function () {
      fitHeight(this);  // a workflow saved before the panel existed has a node too short for it
    });
    chain(nodeType.prototype, "onExecuted", function (message) {
      // The final erasure check of the finished adapter, also when no live events were seen (another tab).
      const info = message?.spare_adapter?.[0];
      if (typeof info?.gap_closed !== "number") return;
      this.spareProgress ??= { step: info.steps_done ?? 0, total: info.steps_done ?? 0, losses: [] };
      this.spareProgress.gapClosed = info.gap_closed;
      this.spareProgress.verdict = info.verdict;
      this.spareProgress.verdictShare = info.verdict_share;
      this.setDirtyCanvas(true, true);
    });
  },
});

app.registerExtension({
  name: "spare.adapterInfo",
  beforeRegisterNodeDef(nodeType, nodeData) {
    if (!ADAPTER_NODES.has(nodeData.name) || nodeData.name === TRAIN_NODE) return;
    chain(nodeType.prototype, "onExecuted", function (message) {
      this.spareInfo = adapterSummary(message?.spare_adapter?.[0]);
      growFor(this, "spareInfoRoom");
      this.setDirtyCanvas(true, true);
    });
    chain(nodeType.prototype, "onDrawForeground", function (ctx) {
      if (this.spareInfo && !this.flags?.collapsed) drawLines(ctx, this, this.spareInfo, this.size[1] - PANEL_HEIGHT);
    });
  },
});

// Words a user types to find the nodes: the front end's node search (1.x) matches search_aliases beside the id and
// the display name. ComfyUI 0.3.75 does not send aliases for nodes like these, so they are added here, before the
// front end indexes the definitions. The 2024 front end's search has no aliases; there the display names count.
const SEARCH_ALIASES = {
  SpareTrainAdapter: ["erase", "erase concept", "erasure", "concept erasure", "remove concept", "unlearn",
    "unlearning", "SPARE", "SPARE erase"],
  SpareComputeSaliency: ["erasure saliency", "SPARE saliency"],
  SpareTimestepSelector: ["erasure timesteps", "SPARE timesteps"],
  SpareErasureReport: ["erasure robustness", "prompt attack", "SPARE report"],
};

app.registerExtension({
  name: "spare.searchAliases",
  addCustomNodeDefs(defs) {
    for (const [name, aliases] of Object.entries(SEARCH_ALIASES)) {
      if (!defs[name]) continue;
      defs[name].search_aliases = [...new Set([...(defs[name].search_aliases || []), ...aliases])];
    }
  },
});

app.registerExtension({
  // Save Erasure Adapter shows the file it wrote (the name the server returns), so the user need not look in the
  // terminal or the folder to find the numbered file.
  name: "spare.savedFile",
  beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== SAVE_NODE) return;
    chain(nodeType.prototype, "onExecuted", function (message) {
      const file = message?.text?.[0];
      if (!file) return;
      this.spareInfo = [`saved: models/loras/${file}`];
      growFor(this, "spareInfoRoom");
      this.setDirtyCanvas(true, true);
    });
    chain(nodeType.prototype, "onDrawForeground", function (ctx) {
      if (this.spareInfo && !this.flags?.collapsed) drawLines(ctx, this, this.spareInfo, this.size[1] - PANEL_HEIGHT);
    });
  },
});

// Each prompt box of the SPARE nodes carries a visible label and its tooltip. Front ends show a multiline box's
// name only as a placeholder, which disappears once the box holds text, and show no tooltip while the pointer is
// over a text box (the box, not the canvas, receives the pointer). The label is drawn on the canvas in a transparent
// strip at the top of the box: both front ends place a box 10 px inside its widget's slot (widget.margin on current
// ones), so the strip lies over the canvas where the node draws the label.
const BOX_LABELS = {
  forget_prompts: "forget: the concept to erase",
  forget_prompt: "forget: the concept to erase",
  surrogate_prompt: "surrogate: what the concept turns into",
  retain_prompts: "retain: concepts to keep unchanged",
  candidates: "candidates: your own concepts to rank",
};
const LABEL_STRIP = 16;
const TOOLTIP_DELAY_MS = 500;

function promptBoxes(nodeData) {
  // name -> tooltip of every multiline text input the node declares.
  const inputs = { ...(nodeData.input?.required ?? {}), ...(nodeData.input?.optional ?? {}) };
  return Object.fromEntries(Object.entries(inputs)
    .filter(([, spec]) => spec?.[0] === "STRING" && spec[1]?.multiline)
    .map(([name, spec]) => [name, spec[1].tooltip ?? ""]));
}

function boxElement(widget) {
  return widget.element ?? widget.inputEl;  // current front ends / the 2024 one
}

function boxShown(node, widget) {
  // A box fed by a link is hidden, converted (the 2024 front end) or replaced by the link, and needs no label.
  const element = boxElement(widget);
  if (!element || element.hidden || element.style.display === "none" || widget.hidden) return false;
  if (String(widget.type).startsWith("converted-widget") || widget.computedHeight <= 0) return false;
  return !node.inputs?.some((input) => input.widget?.name === widget.name && input.link != null);
}

let tooltipElement = null;
let tooltipTimer = null;

function hideBoxTooltip() {
  clearTimeout(tooltipTimer);
  if (tooltipElement) tooltipElement.style.display = "none";
}

function showBoxTooltip(element, text) {
  if (!tooltipElement) {
    tooltipElement = document.createElement("div");
    tooltipElement.className = "spare-box-tooltip";
    Object.assign(tooltipElement.style, {
      position: "fixed", zIndex: 10001, maxWidth: "380px", padding: "6px 8px", borderRadius: "4px",
      background: "#1f1f1f", color: "#ddd", border: "1px solid #555", font: "12px sans-serif",
      lineHeight: "1.35", pointerEvents: "none", display: "none",
    });
    document.body.appendChild(tooltipElement);
  }
  tooltipElement.textContent = text;
  tooltipElement.style.display = "block";
  const box = element.getBoundingClientRect();
  const below = box.bottom + 6 + tooltipElement.offsetHeight < window.innerHeight;
  tooltipElement.style.left = `${Math.max(4, box.left)}px`;
  tooltipElement.style.top = `${below ? box.bottom + 6 : Math.max(4, box.top - tooltipElement.offsetHeight - 6)}px`;
}

function labelBox(widget, label, tooltip) {
  const element = boxElement(widget);
  if (!element || element.spareLabelled) return;
  element.spareLabelled = true;
  Object.assign(element.style, { borderTop: `${LABEL_STRIP}px solid transparent`, backgroundClip: "padding-box",
    boxSizing: "border-box" });
  element.setAttribute("aria-label", `${label}. ${tooltip}`);
  if (!tooltip) return;
  element.addEventListener("mouseenter", () => {
    clearTimeout(tooltipTimer);
    tooltipTimer = setTimeout(() => showBoxTooltip(element, tooltip), TOOLTIP_DELAY_MS);
  });
  for (const event of ["mouseleave", "keydown", "wheel", "pointerdown"]) element.addEventListener(event, hideBoxTooltip);
}

function drawBoxLabels(ctx, node) {
  ctx.save();
  ctx.fillStyle = "#aaa";
  ctx.font = "11px sans-serif";
  for (const widget of node.widgets ?? []) {
    const label = node.spareBoxLabels?.[widget.name];
    if (!label || !boxShown(node, widget)) continue;
    const margin = widget.margin ?? 10;
    ctx.fillText(label, margin + 4, widget.y + margin + LABEL_STRIP - 4);
  }
  ctx.restore();
}

app.registerExtension({
  name: "spare.promptBoxLabels",
  beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData.name.startsWith("Spare")) return;
    const boxes = promptBoxes(nodeData);
    if (!Object.keys(boxes).length) return;
    chain(nodeType.prototype, "onNodeCreated", function () {
      this.spareBoxLabels = {};
      for (const widget of this.widgets ?? []) {
        if (!(widget.name in boxes)) continue;
        const label = BOX_LABELS[widget.name] ?? widget.name.replaceAll("_", " ");
        this.spareBoxLabels[widget.name] = label;
        labelBox(widget, label, boxes[widget.name]);
      }
    });
    chain(nodeType.prototype, "onDrawForeground", function (ctx) {
      if (!this.flags?.collapsed) drawBoxLabels(ctx, this);
    });
  },
});

async function fillLibrary(list, stacked = false) {
  // Rows of the erasure adapters in models/loras: file name, then each summary line apart; stacked (one cell,
  // the name above its lines) for the narrow sidebar.
  try {
    const response = await api.fetchApi("/spare/adapters");
    const { adapters } = await response.json();
    const spare = adapters.filter((a) => a.is_spare);
    if (!spare.length) list.insertRow().insertCell().textContent = "No SPARE adapters yet: train one and save it.";
    for (const adapter of spare) {
      const row = list.insertRow();
      row.className = "spare-library-row";
      const name = row.insertCell();
      name.textContent = adapter.file;
      const details = stacked ? name : row.insertCell();
      if (stacked) name.style.fontWeight = "bold";
      for (const line of adapterSummary(adapter)) {
        const div = document.createElement("div");
        div.className = "spare-library-line";
        div.textContent = line;
        if (stacked) Object.assign(div.style, { fontWeight: "normal", paddingLeft: "8px" });
        details.appendChild(div);
      }
    }
  } catch (error) {
    list.insertRow().insertCell().textContent = `Could not list adapters: ${error}`;
  }
}

function libraryTable() {
  const list = document.createElement("table");
  list.className = "spare-library-list";
  Object.assign(list.style, { borderSpacing: "8px 6px", font: "13px sans-serif" });
  return list;
}

async function showLibrary() {
  // A dialog, for front ends without a sidebar (the 2024 one) and for the command.
  document.getElementById("spare-library")?.remove();
  const dialog = document.createElement("div");
  dialog.id = "spare-library";
  Object.assign(dialog.style, {
    position: "fixed", top: "80px", left: "50%", transform: "translateX(-50%)", zIndex: 10000,
    background: "#1f1f1f", color: "#eee", border: "1px solid #555", borderRadius: "6px", padding: "12px",
    maxHeight: "70vh", overflowY: "auto", minWidth: "520px", font: "13px sans-serif",
  });
  const title = document.createElement("div");
  title.textContent = "Erasure adapters in models/loras";
  title.style.fontWeight = "bold";
  const close = document.createElement("button");
  close.textContent = "Close";
  close.style.float = "right";
  close.onclick = () => dialog.remove();
  title.appendChild(close);
  dialog.appendChild(title);
  const list = libraryTable();
  dialog.appendChild(list);
  document.body.appendChild(dialog);
  await fillLibrary(list);
}

const LIBRARY_COMMAND = "SPARE.ShowAdapterLibrary";
const LIBRARY_TITLE = "SPARE adapters";
const LIBRARY_TOOLTIP = "List the erasure adapters in models/loras and the concepts they erase";

app.registerExtension({
  name: "spare.adapterLibrary",
  // Current front ends: a command (command palette, keybindings) with an entry in the top menu.
  commands: [{ id: LIBRARY_COMMAND, label: "Show SPARE erasure adapters", icon: "pi pi-eraser", function: showLibrary }],
  menuCommands: [{ path: ["Extensions", "SPARE"], commands: [LIBRARY_COMMAND] }],
  setup() {
    const sidebar = app.extensionManager?.registerSidebarTab;
    if (sidebar) {
      // Current front ends: a tab in the sidebar, beside the queue, node and model libraries.
      app.extensionManager.registerSidebarTab({
        id: "spare-adapters", icon: "pi pi-eraser", title: LIBRARY_TITLE, tooltip: LIBRARY_TOOLTIP, type: "custom",
        render: (element) => {
          element.replaceChildren();
          const panel = document.createElement("div");
          panel.id = "spare-library-panel";
          Object.assign(panel.style, { padding: "8px", color: "var(--fg-color, #eee)", overflowY: "auto" });
          const heading = document.createElement("div");
          heading.textContent = "Erasure adapters in models/loras";
          heading.style.fontWeight = "bold";
          const list = libraryTable();
          panel.append(heading, list);
          element.appendChild(panel);
          fillLibrary(list, true);
        },
      });
      return;
    }
    // The 2024 front end: a button in its own menu panel, in the flow of the other menu buttons.
    const button = document.createElement("button");
    button.id = "spare-library-button";
    button.textContent = LIBRARY_TITLE;
    button.title = LIBRARY_TOOLTIP;
    button.onclick = showLibrary;
    const menu = app.ui?.menuContainer ?? document.querySelector(".comfy-menu");
    if (menu) menu.appendChild(button);
    else {
      Object.assign(button.style, { position: "fixed", top: "12px", right: "12px", zIndex: 9999 });
      document.body.appendChild(button);
    }
  },
});
