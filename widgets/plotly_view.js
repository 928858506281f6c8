// plotly.js is evaluated once per page from the PlotlyLibrary model (no CDN, no per-widget bundle).
async function loadPlotly(host, model) {
  if (globalThis.__tspinPlotly) return globalThis.__tspinPlotly;
  globalThis.__tspinPlotly = (async () => {
    const ref = String(model.get("library")).replace(/^IPY_MODEL_/, "anywidget:");  // anywidget's ref form
    const lib = await host.getModel(ref);
    const src = lib.get("source");
    const bytes = src instanceof DataView ? new Uint8Array(src.buffer, src.byteOffset, src.byteLength)
                : src instanceof ArrayBuffer ? new Uint8Array(src) : src;
    const text = typeof bytes === "string" ? bytes : new TextDecoder().decode(bytes);
    // plotly.js 4's UMD header assigns module.exports when a `module` object exists (in a plain
    // <script> it would set window.moduleName, not window.Plotly), so give it one.
    const mod = { exports: {} };
    new Function("module", "exports", "define", text)(mod, mod.exports, undefined);
    const P = mod.exports && mod.exports.react ? mod.exports : globalThis.Plotly;
    if (!P || !P.react) throw new Error("plotly.js did not load");
    globalThis.Plotly = globalThis.Plotly || P;
    return P;
  })();
  globalThis.__tspinPlotly.catch(() => { globalThis.__tspinPlotly = null; });
  return globalThis.__tspinPlotly;
}

function isDark() {
  const b = document.body;
  return !!b && b.dataset && b.dataset.jpThemeLight === "false";
}

// Colours on a dark background: a trace drawn in a dark colour (the weight curve's #333) would vanish,
// so every trace, marker, text and shape colour with a WCAG contrast under 3 against the background is
// mixed with white until it reaches 3 (hues stay recognisable; light colours are left as they are).
let _ctx = null;
function rgba(color) {
  if (typeof color !== "string" || !color) return null;
  _ctx = _ctx || document.createElement("canvas").getContext("2d");
  _ctx.fillStyle = "#000001";
  _ctx.fillStyle = color;
  const c = _ctx.fillStyle;
  if (c === "#000001" && color.replace(/\s/g, "").toLowerCase() !== "#000001") return null;  // not a colour
  if (c[0] === "#") return [parseInt(c.slice(1, 3), 16), parseInt(c.slice(3, 5), 16), parseInt(c.slice(5, 7), 16), 1];
  const m = c.match(/[\d.]+/g);
  return m ? [+m[0], +m[1], +m[2], m.length > 3 ? +m[3] : 1] : null;
}
function luminance([r, g, b]) {
  const f = v => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
  return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
}
function contrast(a, b) {
  const [x, y] = [luminance(a), luminance(b)].sort((p, q) => q - p);
  return (x + 0.05) / (y + 0.05);
}
function readable(color, bg) {
  const c = rgba(color);
  if (!c || c[3] === 0) return color;
  const over = k => [0, 1, 2].map(i => c[i] + (255 - c[i]) * k);
  const seen = k => { const o = over(k); return [0, 1, 2].map(i => o[i] * c[3] + bg[i] * (1 - c[3])); };
  if (contrast(seen(0), bg) >= 3) return color;
  let k = 0;
  while (k < 1 && contrast(seen(k), bg) < 3) k += 0.05;
  const o = over(Math.min(k, 1)).map(v => Math.round(v));
  return `rgba(${o[0]},${o[1]},${o[2]},${Math.max(c[3], 0.9)})`;
}
function readableAll(v, bg) {
  if (typeof v === "string") return readable(v, bg);
  if (Array.isArray(v) && v.length && v.every(x => typeof x === "string")) return v.map(x => readable(x, bg));
  return v;
}
function themedData(data, bgColor) {
  if (!isDark()) return data;
  const bg = (rgba(bgColor) || [17, 17, 17, 1]).slice(0, 3);
  const fix = (obj, key) => { if (obj && obj[key] !== undefined) obj[key] = readableAll(obj[key], bg); };
  return data.map(t => {
    const out = Object.assign({}, t);
    for (const k of ["line", "marker", "textfont", "error_y", "error_x"]) if (t[k]) out[k] = Object.assign({}, t[k]);
    fix(out.line, "color");
    fix(out.marker, "color");
    if (out.marker && out.marker.line) { out.marker.line = Object.assign({}, out.marker.line); fix(out.marker.line, "color"); }
    fix(out.textfont, "color");
    fix(out.error_y, "color");
    fix(out.error_x, "color");
    return out;
  });
}

// JupyterLab's colours where they exist, fixed ones otherwise (Voila, static pages).
function themed(layout) {
  if (!isDark()) return layout;
  const css = getComputedStyle(document.body);
  const v = (name, dflt) => (css.getPropertyValue(name) || "").trim() || dflt;
  const bg = v("--jp-layout-color0", "#111111");
  const fg = v("--jp-ui-font-color1", "#e0e0e0");
  const grid = "rgba(255,255,255,0.12)";
  const line = "rgba(255,255,255,0.35)";
  const out = Object.assign({}, layout);
  out.paper_bgcolor = bg;
  out.plot_bgcolor = bg;
  out.font = Object.assign({}, layout.font || {}, { color: fg });
  out.legend = Object.assign({}, layout.legend || {}, { font: Object.assign({}, (layout.legend || {}).font || {}, { color: fg }) });
  for (const key of Object.keys(out)) {
    if (/^[xy]axis\d*$/.test(key)) {
      out[key] = Object.assign({}, out[key], { gridcolor: grid, linecolor: line, zerolinecolor: line, tickcolor: line });
    }
  }
  for (const key of ["xaxis", "yaxis"]) if (!out[key]) out[key] = { gridcolor: grid, linecolor: line, zerolinecolor: line };
  const bgc = (rgba(bg) || [17, 17, 17, 1]).slice(0, 3);
  if (out.shapes) out.shapes = out.shapes.map(sh => sh.line && sh.line.color ? Object.assign({}, sh, { line: Object.assign({}, sh.line, { color: readable(sh.line.color, bgc) }) }) : sh);
  if (out.annotations) out.annotations = out.annotations.map(a => Object.assign({}, a, { font: Object.assign({}, a.font || {}, { color: fg }) }));
  if (out.template) out.template = undefined;  // the white template would win for unset properties
  return out;
}

export default {
  async render({ model, el, host }) {
    const gd = document.createElement("div");
    gd.className = "tspin-plot";
    gd.style.width = "100%";
    Object.assign(el.style, { width: "100%", minWidth: "0", alignSelf: "stretch", flex: "1 1 auto", display: "block" });
    el.appendChild(gd);
    let chain = Promise.resolve();
    let P = null;
    const draw = () => {
      chain = chain.then(async () => {
        if (!P) P = await loadPlotly(host, model);
        const rev = model.get("revision");
        const fig = JSON.parse(model.get("figure") || "{}");
        const layout = themed(fig.layout || {});
        layout.autosize = true;
        if (model.get("width")) layout.width = model.get("width"); else delete layout.width;
        gd.style.height = (layout.height || 360) + "px";  // a responsive plot takes its div's size
        const data = themedData(fig.data || [], layout.paper_bgcolor);
        await P.react(gd, data, layout, { responsive: true, displaylogo: false });
        gd.dataset.revision = String(rev);
        gd.dataset.theme = isDark() ? "dark" : "light";
        if (model.get("rendered") !== rev) { model.set("rendered", rev); model.save_changes(); }
      }).catch(err => {
        console.error("[tspin] plot failed", err);
        gd.dataset.error = String(err);
      });
      return chain;
    };
    model.on("change:figure", draw);
    model.on("change:width", draw);
    const theme = new MutationObserver(() => {
      if ((isDark() ? "dark" : "light") !== gd.dataset.theme) draw();
    });
    if (document.body) theme.observe(document.body, { attributes: true, attributeFilter: ["data-jp-theme-light", "data-jp-theme-name"] });
    let pending = false;
    const resize = new ResizeObserver(() => {
      if (pending || !P || !gd._fullLayout) return;
      pending = true;
      requestAnimationFrame(() => { pending = false; if (gd.isConnected && gd.offsetWidth > 0) P.Plots.resize(gd); });
    });
    resize.observe(el);
    await draw();
    gd.on && gd.on("plotly_click", ev => {
      const p = ev && ev.points && ev.points[0];
      if (!p) return;
      model.send({ event: "click", curve: p.curveNumber, point: p.pointNumber,
                   customdata: p.customdata === undefined ? null : p.customdata,
                   x: p.x === undefined ? null : p.x, y: p.y === undefined ? null : p.y });
    });
    return () => {
      model.off("change:figure", draw);
      model.off("change:width", draw);
      theme.disconnect();
      resize.disconnect();
      if (P) P.purge(gd);
    };
  },
};

// for tests (tests/browser/test_contrast.py): the dark-theme colour fix, evaluated on its own
export { readable, contrast, rgba };
