// The report's explorer (see locodiff/report/explorer.py): curves, samples with detections and
// Jacobian maps, drawn from the JSON block #explorer-data. Plain DOM, no library.
(() => {
  const data = JSON.parse(document.getElementById("explorer-data").textContent);
  const root = document.getElementById("explorer");
  const SVG = "http://www.w3.org/2000/svg";
  const models = data.models; // each with the colour it has in the report's figures
  const withMaps = models.filter((m) => m.maps);
  const withSamples = models.filter((m) => Object.keys(m.samples).length);
  const withEffects = models.filter((m) => m.effects);
  let refreshMaps = () => {}, refreshEffects = () => {};
  // it opens on an object: the first conditioner's maps (a background pixel's are mostly black)
  const firstScene = withMaps.length ? withMaps[0].maps.scenes[0] : null;
  const state = { shown: new Set(models.map((m) => m.name)), scene: 0,
                  kind: firstScene && firstScene.conditioners.length ? "cond" : "pixel", index: 0,
                  sampleModel: withSamples.length ? withSamples[0].name : null, k: null,
                  effectK: null, effectIndex: 0 };
  window.explorer = state; // read by the browser test

  function el(tag, attrs = {}, ...children) {
    const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c);
    return node;
  }
  function bytes(b64) {
    const s = atob(b64);
    const out = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out;
  }
  function section(title, ...children) {
    return el("div", { class: "ex-part" }, el("h3", {}, title), ...children);
  }

  // ----- which models are shown -------------------------------------------------------------
  function toggles(onChange) {
    return el("div", { class: "ex-toggles" }, ...models.map((m) => {
      const box = el("input", { type: "checkbox", "data-model": m.name, onchange: (e) => {
        e.target.checked ? state.shown.add(m.name) : state.shown.delete(m.name);
        onChange();
      } });
      box.checked = true;
      return el("label", { style: `color:${m.color}` }, box, " " + m.name);
    }));
  }

  // ----- curves with intervals ----------------------------------------------------------------
  function plot(key, title) {
    const W = 420, H = 240, L = 40, R = 10, T = 20, B = 30;
    const rows = models.filter((m) => state.shown.has(m.name)).flatMap((m) => m[key]);
    const ks = rows.map((r) => r[0]);
    const ys = rows.flatMap((r) => r.slice(1).filter((v) => v !== null));
    const k0 = Math.min(0, ...ks), k1 = Math.max(1, ...ks);
    const y0 = Math.min(0, ...ys), y1 = Math.max(1, ...ys);
    const x = (k) => L + ((k - k0) / (k1 - k0)) * (W - L - R);
    const y = (v) => H - B - ((v - y0) / (y1 - y0)) * (H - T - B);
    const svg = el("svg:svg", { width: W, height: H, class: "ex-plot", "data-curve": key });
    svg.append(el("svg:text", { x: L, y: 14, "font-size": 12 }, title));
    svg.append(el("svg:line", { x1: L, x2: W - R, y1: H - B, y2: H - B, stroke: "#888" }));
    svg.append(el("svg:line", { x1: L, x2: L, y1: T, y2: H - B, stroke: "#888" }));
    for (let k = Math.ceil(k0); k <= k1; k++) svg.append(el("svg:text", { x: x(k) - 3, y: H - B + 14, "font-size": 10 }, String(k)));
    for (const v of [y0, (y0 + y1) / 2, y1]) svg.append(el("svg:text", { x: 4, y: y(v) + 4, "font-size": 10 }, v.toFixed(2)));
    svg.append(el("svg:text", { x: W / 2, y: H - 2, "font-size": 11 }, "objects k"));
    for (const m of models) {
      if (!state.shown.has(m.name) || !m[key].length) continue;
      const band = m[key].filter((r) => r[2] !== null && r[3] !== null);
      if (band.length > 1) {
        const pts = band.map((r) => `${x(r[0])},${y(r[3])}`).concat(band.slice().reverse().map((r) => `${x(r[0])},${y(r[2])}`));
        svg.append(el("svg:polygon", { points: pts.join(" "), fill: m.color, opacity: 0.15 }));
      }
      svg.append(el("svg:polyline", { points: m[key].map((r) => `${x(r[0])},${y(r[1])}`).join(" "), fill: "none",
                                      stroke: m.color, "stroke-width": 2, "data-model": m.name }));
      for (const r of m[key]) {
        const dot = el("svg:circle", { cx: x(r[0]), cy: y(r[1]), r: 3, fill: m.color });
        dot.append(el("svg:title", {}, `${m.name}, k = ${r[0]}: ${r[1].toFixed(3)}` +
                      (r[2] !== null ? ` [${r[2].toFixed(3)}, ${r[3].toFixed(3)}]` : "")));
        svg.append(dot);
      }
    }
    return svg;
  }

  // ----- samples with detections ----------------------------------------------------------------
  function samplePanel() {
    const panel = el("div", {});
    if (!withSamples.length) return el("p", {}, "No evaluation samples were saved.");
    const hover = el("div", { class: "ex-hover", id: "explorer-hover" }, "Hover a sample to see which requested locations were found.");
    const modelPick = el("select", { id: "explorer-sample-model", onchange: (e) => { state.sampleModel = e.target.value; draw(); } },
                         ...withSamples.map((m) => el("option", { value: m.name }, m.name)));
    const kPick = el("select", { id: "explorer-sample-k", onchange: (e) => { state.k = e.target.value; draw(); } });
    const strip = el("div", { class: "ex-strip" });
    function draw() {
      const m = withSamples.find((x) => x.name === state.sampleModel);
      const ks = Object.keys(m.samples);
      if (!ks.includes(state.k)) state.k = ks.includes("3") ? "3" : ks[0];
      kPick.replaceChildren(...ks.map((k) => el("option", { value: k }, `k = ${k}`)));
      kPick.value = state.k;
      const s = m.samples[state.k];
      const img = new Image();
      img.onload = () => {
        const side = img.naturalHeight, n = Math.floor(img.naturalWidth / side);
        strip.replaceChildren(...s.items.slice(0, n).map((item, i) => sampleView(img, side, i, item, hover)));
      };
      img.src = s.strip;
    }
    draw();
    panel.append(el("div", {}, "model ", modelPick, " ", kPick), strip, hover);
    return panel;
  }
  function sampleView(img, side, i, item, hover) {
    const scale = 4, size = side * scale;
    const canvas = el("canvas", { width: side, height: side, style: `width:${size}px;height:${size}px` });
    canvas.getContext("2d").drawImage(img, i * side, 0, side, side, 0, 0, side, side);
    const svg = el("svg:svg", { width: size, height: size, viewBox: "0 0 1 1", class: "ex-overlay" });
    item.detected.forEach(([x, y]) => svg.append(el("svg:circle", { cx: x, cy: y, r: 0.06, fill: "none", stroke: "#ffd400", "stroke-width": 0.015 })));
    item.requested.forEach(([x, y], j) => {
      const c = item.found[j] ? "#00e000" : "#ff2020", d = 0.04;
      svg.append(el("svg:path", { d: `M${x - d},${y - d}L${x + d},${y + d}M${x - d},${y + d}L${x + d},${y - d}`, stroke: c, "stroke-width": 0.02 }));
    });
    const lines = item.requested.map(([x, y], j) => `(${x.toFixed(2)}, ${y.toFixed(2)}) ${item.found[j] ? "found" : "missed"}`);
    const text = `sample ${item.index}: ${item.found.filter(Boolean).length} of ${item.requested.length} requested found, ` +
                 `${item.detected.length} detected` + (lines.length ? ` — ${lines.join("; ")}` : "");
    return el("div", { class: "ex-sample", "data-index": item.index, onmouseenter: () => { hover.textContent = text; } }, canvas, svg);
  }

  // ----- Jacobian maps ------------------------------------------------------------------------------
  function paint(canvas, values, w, h) {
    const ctx = canvas.getContext("2d"), image = ctx.createImageData(w, h);
    for (let i = 0; i < w * h; i++) {
      image.data[4 * i] = image.data[4 * i + 1] = image.data[4 * i + 2] = values[i];
      image.data[4 * i + 3] = 255;
    }
    ctx.putImageData(image, 0, 0);
  }
  function sceneCanvas(b64, w, h, scale, id) {
    const canvas = el("canvas", { id, width: w, height: h, style: `width:${w * scale}px;height:${h * scale}px` });
    const rgb = bytes(b64), ctx = canvas.getContext("2d"), image = ctx.createImageData(w, h);
    for (let i = 0; i < w * h; i++) {
      for (let c = 0; c < 3; c++) image.data[4 * i + c] = rgb[3 * i + c];
      image.data[4 * i + 3] = 255;
    }
    ctx.putImageData(image, 0, 0);
    return canvas;
  }
  function mapPanel() {
    if (!withMaps.length) return el("p", {}, "No locality maps were saved.");
    const first = withMaps[0].maps, w = first.width, h = first.height, scale = 8;
    const scenePick = el("select", { id: "explorer-scene-pick", onchange: (e) => { state.scene = +e.target.value; state.kind = "pixel"; state.index = 0; draw(); } },
                         ...first.scenes.map((_, b) => el("option", { value: b }, `scene ${b + 1}`)));
    const picker = el("div", { class: "ex-picker" });
    const grid = el("div", { class: "ex-maps" });
    const caption = el("p", { class: "cap", id: "explorer-selection" });
    function draw() {
      const scene = first.scenes[state.scene];
      const canvas = sceneCanvas(scene.image, w, h, scale, "explorer-scene");
      const svg = el("svg:svg", { width: w * scale, height: h * scale, viewBox: `0 0 ${w} ${h}`, class: "ex-overlay",
                                   onclick: (e) => pickPixel(e, svg) });
      scene.pixels.forEach(([r, c], m) => svg.append(el("svg:rect", { x: c + 0.25, y: r + 0.25, width: 0.5, height: 0.5,
        fill: state.kind === "pixel" && state.index === m ? "#ff0" : "#0cf", "data-pixel": m })));
      scene.conditioners.forEach(([x, y], n) => {
        const mark = el("svg:circle", { cx: x * w, cy: y * h, r: 1.2, fill: "rgba(255,0,255,0.15)", "stroke-width": 0.4, "data-conditioner": n,
                                        stroke: state.kind === "cond" && state.index === n ? "#ff0" : "#f0f", style: "cursor:pointer",
                                        onclick: (e) => { e.stopPropagation(); state.kind = "cond"; state.index = n; draw(); } });
        svg.append(mark);
      });
      picker.replaceChildren(el("div", { class: "ex-stack" }, canvas, svg));
      drawMaps();
    }
    function pickPixel(e, svg) {
      const box = svg.getBoundingClientRect();
      const col = ((e.clientX - box.left) / box.width) * w, row = ((e.clientY - box.top) / box.height) * h;
      const pixels = first.scenes[state.scene].pixels;
      let best = 0, bestD = Infinity;
      pixels.forEach(([r, c], m) => { const d = (r + 0.5 - row) ** 2 + (c + 0.5 - col) ** 2; if (d < bestD) { bestD = d; best = m; } });
      state.kind = "pixel"; state.index = best; draw();
    }
    function drawMaps() {
      const scene = first.scenes[state.scene];
      const what = state.kind === "pixel"
        ? `input-pixel Jacobian energy of output pixel (row ${scene.pixels[state.index][0]}, col ${scene.pixels[state.index][1]})`
        : `sensitivity of the output to conditioner ${state.index + 1} at (${scene.conditioners[state.index].map((v) => v.toFixed(2)).join(", ")})`;
      caption.textContent = `Scene ${state.scene + 1}: ${what}; each map scaled to its own maximum (white), one row per model, one column per noise level` +
        (state.kind === "pixel" ? "; under each, that pixel's sensitivity to each conditioner (|d output / d location|, from the saved maps)." : ".");
      const rows = withMaps.filter((m) => state.shown.has(m.name) && m.maps.scenes[state.scene]).map((m) => {
        const sc = m.maps.scenes[state.scene];
        const cells = m.maps.sigmas.map((sigma, s) => {
          const all = bytes(state.kind === "pixel" ? sc.pixel_maps[s] : sc.cond_maps[s]);
          const canvas = el("canvas", { class: "explorer-map", width: w, height: h, style: `width:${w * 3}px;height:${h * 3}px`,
                                        "data-model": m.name, "data-sigma": s, "data-kind": state.kind, "data-index": state.index, "data-scene": state.scene });
          if (state.index * w * h < all.length) paint(canvas, all.subarray(state.index * w * h, (state.index + 1) * w * h), w, h);
          const peak = (state.kind === "pixel" ? sc.pixel_peaks : sc.cond_peaks)[s][state.index];
          const label = `σ=${sigma} max ${peak === undefined ? "–" : peak.toExponential(1)}`;
          return el("figure", { class: "ex-cell" }, canvas, el("figcaption", {}, label),
                    state.kind === "pixel" ? el("figcaption", { class: "ex-dc" }, conditionerValues(sc, s, w, h)) : "");
        });
        return el("div", { class: "ex-row" }, el("div", { class: "ex-name", style: `color:${m.color}` }, m.name), ...cells);
      });
      grid.replaceChildren(...rows);
    }
    function conditionerValues(sc, s, w, h) {
      // |d s_i / d c_k| of the clicked output pixel i for each conditioner k (from the saved maps)
      const [r, c] = sc.pixels[state.index], maps = bytes(sc.cond_maps[s]), n = sc.cond_peaks[s].length;
      const values = [...Array(n).keys()].map((k) => (maps[k * w * h + r * w + c] / 255) * sc.cond_peaks[s][k]);
      return values.length ? "d/dc: " + values.map((v) => v.toExponential(1)).join(" | ") : "no conditioner";
    }
    refreshMaps = drawMaps;
    draw();
    return el("div", {}, el("div", {}, scenePick, " click an output pixel (nearest probed pixel, blue squares) or a conditioner (circle)"),
              picker, caption, grid);
  }

  // ----- each conditioner's effect alone and among the others, at k = 1..10 --------------------------
  function effectPanel() {
    if (!withEffects.length) return el("p", {}, "No effect maps at k = 1..10 were saved (a probe made before the extrapolation probe " +
                                           "kept them; delete its extrapolation.json to measure it again).");
    const first = withEffects[0].effects, w = first.width, h = first.height, scale = 8;
    const ks = Object.keys(first.counts).map(Number).sort((a, b) => a - b);
    state.effectK = String(ks[ks.length - 1]); // the largest k: where generalization is asked hardest
    const kPick = el("select", { id: "explorer-effect-k", onchange: (e) => { state.effectK = e.target.value; state.effectIndex = 0; draw(); } },
                     ...ks.map((k) => el("option", { value: k }, `k = ${k}`)));
    const picker = el("div", { class: "ex-picker" }), grid = el("div", { class: "ex-maps" });
    const caption = el("p", { class: "cap", id: "explorer-effect-caption" });
    function draw() {
      kPick.value = state.effectK;
      const scene = first.counts[state.effectK];
      const svg = el("svg:svg", { width: w * scale, height: h * scale, viewBox: `0 0 ${w} ${h}`, class: "ex-overlay" });
      scene.conditioners.forEach(([x, y], n) => svg.append(el("svg:circle", {
        cx: x * w, cy: y * h, r: 1.2, fill: "rgba(255,0,255,0.15)", "stroke-width": 0.4, "data-effect-conditioner": n,
        stroke: state.effectIndex === n ? "#ff0" : "#f0f", style: "cursor:pointer",
        onclick: () => { state.effectIndex = n; draw(); } })));
      picker.replaceChildren(el("div", { class: "ex-stack" }, sceneCanvas(scene.image, w, h, scale, "explorer-effect-scene"), svg));
      drawEffects();
    }
    function drawEffects() {
      const [x, y] = first.counts[state.effectK].conditioners[state.effectIndex];
      caption.textContent = `k = ${state.effectK}, conditioner ${state.effectIndex + 1} at (${x.toFixed(2)}, ${y.toFixed(2)}), σ = ${first.sigma}: ` +
        "the change of the denoised image when it is added to an empty request (alone) and to all the others (among), " +
        "per pixel, both on one scale (white: the larger maximum). Under a local conditional score the two agree near it.";
      const rows = withEffects.filter((m) => state.shown.has(m.name) && m.effects.counts[state.effectK]).map((m) => {
        const c = m.effects.counts[state.effectK], n = w * h, i = state.effectIndex;
        const cells = ["alone", "among"].map((which) => {
          const canvas = el("canvas", { class: "explorer-effect", width: w, height: h, style: `width:${w * 3}px;height:${h * 3}px`,
                                        "data-model": m.name, "data-which": which, "data-k": state.effectK, "data-index": i });
          paint(canvas, bytes(c[which]).subarray(i * n, (i + 1) * n), w, h);
          return el("figure", { class: "ex-cell" }, canvas, el("figcaption", {}, which));
        });
        return el("div", { class: "ex-row" }, el("div", { class: "ex-name", style: `color:${m.color}` }, m.name), ...cells,
                  el("span", { class: "ex-dc" }, `max ${c.peaks[i].toExponential(1)}`));
      });
      grid.replaceChildren(...rows);
    }
    refreshEffects = drawEffects;
    draw();
    return el("div", {}, el("div", {}, kPick, " click a conditioner (circle) of the evaluation's scene"), picker, caption, grid);
  }

  // ----- page ---------------------------------------------------------------------------------------
  const plots = el("div", { class: "ex-plots" });
  const maps = mapPanel(), effects = effectPanel();
  function redraw() {
    plots.replaceChildren(plot("recall", "recall per k (95% interval)"), plot("locality", "efficacy per k: locality where generalization is asked"));
    refreshMaps();
    refreshEffects();
  }
  const style = el("style", {}, `
    #explorer .ex-toggles label{margin-right:1em;font-weight:bold}
    #explorer .ex-plots svg{margin-right:1em;border:1px solid #eee}
    #explorer .ex-strip{display:flex;flex-wrap:wrap;gap:4px}
    #explorer .ex-sample,#explorer .ex-stack{position:relative;display:inline-block}
    #explorer .ex-overlay{position:absolute;left:0;top:0}
    #explorer canvas{image-rendering:pixelated;display:block}
    #explorer .ex-hover{min-height:2.5em;font-size:90%;color:#333}
    #explorer .ex-row{display:flex;align-items:center;gap:4px}
    #explorer .ex-name{width:9em;font-weight:bold;text-align:right;padding-right:.5em}
    #explorer .ex-cell{margin:2px}#explorer .ex-cell figcaption{font-size:70%}`);
  root.append(style, toggles(redraw), section("Curves", plots), section("Samples and detections", samplePanel()),
              section("Where generalization is asked: each conditioner alone and among the others", effects),
              section("Locality maps (1–3-object probe scenes)", maps));
  redraw();
  root.dataset.ready = "1";
})();
