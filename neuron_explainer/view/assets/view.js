/* neuron-explainer viewer. Draws the page's JSON (script#nx-data) into every element marked
   data-nx="RENDERER" data-key="PATH". No network, no libraries: works from file:// and in iframes. */
(function () {
  "use strict";
  var NX = (window.NX = window.NX || {});
  NX.renderers = NX.renderers || {};
  var POS = "230,97,1"; /* positive values: orange */
  var NEG = "33,102,172"; /* negative values: blue */

  function esc(s) {
    return String(s).replace(/[&<>"]/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c];
    });
  }
  function fmt(v) {
    if (v === null || v === undefined || isNaN(v)) return "–";
    var a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(2);
    return String(+v.toPrecision(4));
  }
  function lookup(obj, path) {
    return path.split(".").reduce(function (o, k) { return o == null ? o : o[k]; }, obj);
  }
  function shade(v, s) {
    if (v === null || !s || v === 0) return "transparent";
    var a = Math.min(1, Math.abs(v) / s) * 0.85;
    return "rgba(" + (v > 0 ? POS : NEG) + "," + a.toFixed(3) + ")";
  }
  function shown(t) {
    return t.replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5");
  }
  NX.fmt = fmt;
  NX.esc = esc;

  /* Token heatmaps. group = {items: [{id | t, o?, label, rows: [{n, v, s}]}]}; tokens from data.ex[id]. */
  NX.renderers.excerpts = function (el, group, data) {
    var out = [];
    group.items.forEach(function (item, e) {
      var toks = item.t || data.ex[item.id] || [];
      var off = item.o || 0;
      out.push('<div class="nx-ex"><div class="nx-label">' + esc(item.label) + "</div>");
      item.rows.forEach(function (row, r) {
        out.push('<div class="nx-row">');
        if (item.rows.length > 1) out.push('<span class="nx-rowname">' + esc(row.n) + "</span>");
        out.push('<span class="nx-toks">');
        for (var i = 0; i < row.v.length; i++) {
          var v = row.v[i];
          var cls = v > 0 ? "nx-tok nx-pos" : v < 0 ? "nx-tok nx-neg" : "nx-tok";
          var tok = shown(toks[i + off] === undefined ? "" : toks[i + off]);
          if (tok === "") cls += " nx-empty";
          if (item.mark === i) cls += " nx-marked";
          out.push('<span class="' + cls + '" style="background:' + shade(v, row.s) + '" data-e="' + e +
            '" data-r="' + r + '" data-i="' + i + '">' + esc(tok) + "</span>");
        }
        out.push("</span></div>");
      });
      out.push("</div>");
    });
    el.innerHTML = out.join("");
    el.nxGroup = group;
    el.nxData = data;
    el.nxTip = function (span) {
      var item = group.items[+span.dataset.e];
      var i = +span.dataset.i;
      var toks = item.t || data.ex[item.id] || [];
      var lines = ['<b>"' + esc(shown(toks[i + (item.o || 0)] || "")) + '"</b>'];
      item.rows.forEach(function (row) { lines.push(esc(row.n) + ": " + fmt(row.v[i])); });
      return lines.join("<br>");
    };
  };

  /* One tooltip for the page. A renderer that wants one sets el.nxTip(target) -> HTML (or null) on its
     element; the targets are its token spans (.nx-tok) and any element marked .nx-tipped. */
  function tooltip() {
    var tip = document.createElement("div");
    tip.id = "nx-tip";
    tip.setAttribute("role", "tooltip");
    document.body.appendChild(tip);
    document.addEventListener("mouseover", function (ev) {
      var target = ev.target.closest ? ev.target.closest(".nx-tok, .nx-tipped") : null;
      var host = target && target.closest("[data-nx]");
      var text = host && host.nxTip ? host.nxTip(target) : null;
      if (!text) { tip.style.display = "none"; return; }
      tip.innerHTML = text;
      var box = target.getBoundingClientRect();
      tip.style.display = "block";
      var right = window.scrollX + document.documentElement.clientWidth - tip.offsetWidth - 4;
      tip.style.left = Math.max(4, Math.min(box.left + window.scrollX, right)) + "px";
      tip.style.top = box.bottom + window.scrollY + 6 + "px";
    });
  }

  function svgOpen(w, h, label) {
    return '<svg class="nx-svg" viewBox="0 0 ' + w + " " + h + '" width="' + w + '" height="' + h +
      '" role="img" aria-label="' + esc(label) + '">';
  }
  function axisText(x, y, text, anchor, cls) {
    return '<text x="' + x.toFixed(1) + '" y="' + y.toFixed(1) + '" text-anchor="' + (anchor || "middle") +
      '" class="' + (cls || "nx-axis") + '">' + esc(text) + "</text>";
  }

  /* Activation histogram, log count. h = {edges, series: [{name, counts}], marks: [{x, label}], mean}. */
  NX.renderers.histogram = function (el, h) {
    var W = 560, H = 220, L = 40, R = 26, T = 40, B = 30;
    var lo = h.edges[0], hi = h.edges[h.edges.length - 1];
    var X = function (v) { return L + ((v - lo) / (hi - lo)) * (W - L - R); };
    var peak = 1;
    h.series.forEach(function (s) { s.counts.forEach(function (c) { peak = Math.max(peak, c); }); });
    var Y = function (c) { return H - B - (Math.log10(1 + c) / Math.log10(1 + peak)) * (H - B - T); };
    var out = [svgOpen(W, H, "activation histogram")];
    h.series.forEach(function (s, k) {
      s.counts.forEach(function (c, i) {
        if (!c) return;
        var x0 = X(h.edges[i]), x1 = X(h.edges[i + 1]);
        out.push('<rect class="nx-bar nx-bar' + k + '" x="' + x0.toFixed(1) + '" y="' + Y(c).toFixed(1) +
          '" width="' + Math.max(0.5, x1 - x0 - 0.5).toFixed(1) + '" height="' + (H - B - Y(c)).toFixed(1) +
          '"><title>' + esc(s.name) + ": " + c + " tokens in [" + fmt(h.edges[i]) + ", " + fmt(h.edges[i + 1]) +
          ")</title></rect>");
      });
    });
    h.marks.forEach(function (m, k) {
      if (m.x === null || m.x < lo || m.x > hi) return;
      out.push('<line class="nx-mark" x1="' + X(m.x).toFixed(1) + '" x2="' + X(m.x).toFixed(1) + '" y1="' + T +
        '" y2="' + (H - B) + '"><title>' + esc(m.label) + " = " + fmt(m.x) + "</title></line>");
      out.push(axisText(X(m.x), T - 4 - k * 9, m.label, "middle", "nx-marklabel"));
    });
    if (h.mean !== null) {
      out.push('<line class="nx-mean" x1="' + X(h.mean).toFixed(1) + '" x2="' + X(h.mean).toFixed(1) +
        '" y1="' + T + '" y2="' + (H - B) + '"><title>mean = ' + fmt(h.mean) + "</title></line>");
    }
    out.push('<line class="nx-axisline" x1="' + L + '" x2="' + (W - R) + '" y1="' + (H - B) + '" y2="' + (H - B) + '"/>');
    [lo, 0, hi].forEach(function (v) {
      if (v >= lo && v <= hi) out.push(axisText(X(v), H - B + 14, fmt(v)));
    });
    out.push(axisText(W / 2, H - 3, "activation"));
    out.push(axisText(L - 4, Y(peak) + 4, fmt(peak), "end"));
    out.push(axisText(L - 4, H - B, "0", "end"));
    out.push('<text class="nx-axis" transform="translate(11,' + (H - B) / 2 + ') rotate(-90)" text-anchor="middle">tokens (log)</text>');
    el.innerHTML = out.join("") + "</svg>";
  };

  /* True vs simulated over every token of a simulation group (rows[0] true, rows[1] simulated). */
  NX.renderers.scatter = function (el, group, data) {
    var W = 300, H = 260, L = 44, R = 10, T = 10, B = 34;
    var xs = [], ys = [];
    group.items.forEach(function (item) {
      var t = item.rows[0].v, s = item.rows[1].v;
      for (var i = 0; i < t.length; i++) if (t[i] !== null && s[i] !== null) { xs.push(t[i]); ys.push(s[i]); }
    });
    var range = function (a) {
      var lo = Math.min.apply(null, a.concat([0])), hi = Math.max.apply(null, a.concat([0]));
      return hi > lo ? [lo, hi] : [lo - 1, hi + 1];
    };
    var rx = range(xs), ry = range(ys);
    var X = function (v) { return L + ((v - rx[0]) / (rx[1] - rx[0])) * (W - L - R); };
    var Y = function (v) { return H - B - ((v - ry[0]) / (ry[1] - ry[0])) * (H - B - T); };
    var out = [svgOpen(W, H, "true vs simulated activations")];
    out.push('<rect class="nx-frame" x="' + L + '" y="' + T + '" width="' + (W - L - R) + '" height="' + (H - B - T) + '"/>');
    var key = el.dataset.key.split(".").pop();
    var cal = data.scatter && data.scatter[key] && data.scatter[key].cal;
    if (cal && cal.slope) {
      /* activation = slope * simulated + intercept: the points (a, s) on it inside the frame */
      var ends = [];
      [ry[0], ry[1]].forEach(function (sv) {
        var a = cal.slope * sv + cal.intercept;
        if (a >= rx[0] && a <= rx[1]) ends.push([a, sv]);
      });
      [rx[0], rx[1]].forEach(function (a) {
        var sv = (a - cal.intercept) / cal.slope;
        if (sv > ry[0] && sv < ry[1]) ends.push([a, sv]);
      });
      if (ends.length >= 2) {
        out.push('<line class="nx-cal" x1="' + X(ends[0][0]).toFixed(1) + '" y1="' + Y(ends[0][1]).toFixed(1) +
          '" x2="' + X(ends[1][0]).toFixed(1) + '" y2="' + Y(ends[1][1]).toFixed(1) + '"><title>calibration</title></line>');
      }
    }
    for (var i = 0; i < xs.length; i++) {
      out.push('<circle class="nx-pt" cx="' + X(xs[i]).toFixed(1) + '" cy="' + Y(ys[i]).toFixed(1) + '" r="2.2"/>');
    }
    out.push(axisText(L, H - B + 13, fmt(rx[0]), "start"), axisText(W - R, H - B + 13, fmt(rx[1]), "end"));
    out.push(axisText((L + W - R) / 2, H - 4, "true activation"));
    out.push(axisText(L - 4, H - B, fmt(ry[0]), "end"), axisText(L - 4, T + 8, fmt(ry[1]), "end"));
    out.push('<text class="nx-axis" transform="translate(12,' + (H - B) / 2 + ') rotate(-90)" text-anchor="middle">simulated</text>');
    el.innerHTML = out.join("") + "</svg>";
  };

  /* Small multiples: one score histogram per layer. h = {edges, layers: [{layer, counts, undefined}]}. */
  NX.renderers.layerhist = function (el, h) {
    var W = 150, H = 70, B = 14;
    var peak = 1;
    h.layers.forEach(function (l) { l.counts.forEach(function (c) { peak = Math.max(peak, c); }); });
    var n = h.edges.length - 1, bw = W / n;
    var out = [];
    h.layers.forEach(function (l) {
      var svg = [svgOpen(W, H + B, "layer " + l.layer + " scores")];
      l.counts.forEach(function (c, i) {
        var bh = (c / peak) * (H - 12);
        svg.push('<rect class="nx-bar nx-bar0" x="' + (i * bw).toFixed(1) + '" y="' + (H - bh).toFixed(1) + '" width="' +
          (bw - 1).toFixed(1) + '" height="' + bh.toFixed(1) + '"><title>[' + fmt(h.edges[i]) + ", " +
          fmt(h.edges[i + 1]) + "): " + c + "</title></rect>");
      });
      svg.push('<line class="nx-mark" x1="' + W / 2 + '" x2="' + W / 2 + '" y1="0" y2="' + H + '"/>');
      svg.push(axisText(2, H + 11, "−1", "start"), axisText(W / 2, H + 11, "0"), axisText(W - 2, H + 11, "1", "end"));
      out.push('<figure class="nx-mini">' + svg.join("") + "</svg><figcaption>layer " + l.layer +
        (l.undefined ? " · " + l.undefined + " undefined" : "") + "</figcaption></figure>");
    });
    el.innerHTML = out.join("");
  };

  NX.renderAll = function (root) {
    var node = document.getElementById("nx-data");
    var data = node ? JSON.parse(node.textContent) : {};
    NX.data = data;
    (root || document).querySelectorAll("[data-nx]").forEach(function (el) {
      var render = NX.renderers[el.dataset.nx];
      if (render) render(el, lookup(data, el.dataset.key || ""), data);
    });
  };

  /* The index: layer data files (index/layer-LLL.js, each calling NX.indexChunk) are loaded one after
     another as script elements: under file:// a page may not read local files from script. Only one page of
     rows is in the DOM at a time; filtering and sorting run over plain arrays. */
  var COLS = ["layer", "neuron", "expl", "tr", "ro", "ab", "max", "dens"];
  var PAGE = 100;
  var ix = null;

  NX.renderers.index = function (el, meta) {
    ix = { meta: meta, el: el, loaded: 0, rows: 0, sortCol: meta.sort || "tr", sortDir: -1, start: 0, view: [] };
    COLS.concat(["lower", "page"]).forEach(function (c) { ix[c] = []; });
    var timer = null;
    var later = function () { clearTimeout(timer); timer = setTimeout(function () { ix.start = 0; refresh(); }, 120); };
    ["nx-search", "nx-min", "nx-max"].forEach(function (id) { document.getElementById(id).addEventListener("input", later); });
    document.getElementById("nx-layer").addEventListener("change", function () { ix.start = 0; refresh(); });
    document.getElementById("nx-prev").addEventListener("click", function () { ix.start = Math.max(0, ix.start - PAGE); draw(); });
    document.getElementById("nx-next").addEventListener("click", function () {
      if (ix.start + PAGE < ix.view.length) { ix.start += PAGE; draw(); }
    });
    el.querySelectorAll("th[data-col]").forEach(function (th) {
      th.addEventListener("click", function () {
        var col = th.dataset.col;
        ix.sortDir = ix.sortCol === col ? -ix.sortDir : (col === "expl" || col === "layer" || col === "neuron" ? 1 : -1);
        ix.sortCol = col;
        ix.start = 0;
        refresh();
      });
    });
    loadNext();
  };

  function loadNext() {
    if (ix.loaded >= ix.meta.files.length) { refresh(); return; }
    var s = document.createElement("script");
    s.src = ix.meta.files[ix.loaded];
    s.onload = function () { ix.loaded += 1; if (ix.loaded % 8 === 0) refresh(); loadNext(); };
    s.onerror = function () { status("Could not load " + s.src + ": is the site folder complete?"); };
    document.head.appendChild(s);
  }

  NX.indexChunk = function (c) {
    var pages = c.pages ? new Set(c.pages) : null;
    for (var i = 0; i < c.neuron.length; i++) {
      ix.layer.push(c.layer); ix.neuron.push(c.neuron[i]); ix.expl.push(c.expl[i]);
      ix.lower.push(c.expl[i].toLowerCase()); ix.tr.push(c.tr[i]); ix.ro.push(c.ro[i]); ix.ab.push(c.ab[i]);
      ix.max.push(c.max[i]); ix.dens.push(c.dens[i]); ix.page.push(!pages || pages.has(c.neuron[i]));
    }
    ix.rows += c.neuron.length;
  };

  NX.indexRefresh = function () { refresh(); };  /* for benchmarks and tests: filter, sort and draw now */

  function status(text) { document.getElementById("nx-status").textContent = text; }

  function number(id) {
    var v = document.getElementById(id).value;
    return v === "" ? null : parseFloat(v);
  }

  /* All rows in the current sort order, computed again only when the sort or the rows change, so
     typing in the search box costs one pass over the rows and no sort. */
  function order() {
    var key = ix.sortCol + ":" + ix.sortDir + ":" + ix.rows;
    if (ix.orderKey === key) return ix.order;
    var col = ix[ix.sortCol], dir = ix.sortDir;
    var all = new Array(ix.rows);
    for (var i = 0; i < ix.rows; i++) all[i] = i;
    all.sort(function (a, b) {
      var x = col[a], y = col[b];
      if (x === y || (x === null && y === null)) return ix.layer[a] - ix.layer[b] || ix.neuron[a] - ix.neuron[b];
      if (x === null || x === "") return 1;  /* missing values last in either direction */
      if (y === null || y === "") return -1;
      return (x < y ? -1 : 1) * dir;
    });
    ix.order = all;
    ix.orderKey = key;
    return all;
  }

  function refresh() {
    var q = document.getElementById("nx-search").value.trim().toLowerCase();
    var words = q ? q.split(/\s+/) : [];
    var layerSel = document.getElementById("nx-layer").value;
    var layer = layerSel === "" ? null : +layerSel;
    var lo = number("nx-min"), hi = number("nx-max");
    var all = order();
    var view = [];
    for (var k = 0; k < all.length; k++) {
      var i = all[k];
      if (layer !== null && ix.layer[i] !== layer) continue;
      var tr = ix.tr[i];
      if ((lo !== null || hi !== null) && (tr === null || (lo !== null && tr < lo) || (hi !== null && tr > hi))) continue;
      var ok = true;
      for (var w = 0; w < words.length && ok; w++) ok = ix.lower[i].indexOf(words[w]) >= 0;
      if (ok) view.push(i);
    }
    ix.view = view;
    ix.el.querySelectorAll("th[data-col]").forEach(function (th) {
      th.setAttribute("aria-sort", th.dataset.col === ix.sortCol ? (ix.sortDir > 0 ? "ascending" : "descending") : "none");
    });
    var loading = ix.loaded < ix.meta.files.length ? " (loading layer " + (ix.loaded + 1) + " of " + ix.meta.files.length + ")" : "";
    status(view.length.toLocaleString() + " of " + ix.rows.toLocaleString() + " neurons" + loading);
    draw();
  }

  function cell(v, digits) {
    return '<td class="nx-num">' + (v === null ? "–" : digits ? (v >= 0 ? "+" : "") + v.toFixed(digits) : fmt(v)) + "</td>";
  }

  function draw() {
    var out = [];
    var end = Math.min(ix.view.length, ix.start + PAGE);
    for (var k = ix.start; k < end; k++) {
      var i = ix.view[k];
      var name = ix.neuron[i];
      if (ix.page[i]) name = '<a href="neurons/' + ix.layer[i] + "/" + ix.neuron[i] + '.html">' + name + "</a>";
      out.push("<tr><td class=\"nx-num\">" + ix.layer[i] + '</td><td class="nx-num">' + name + "</td><td>" +
        esc(ix.expl[i]) + "</td>" + cell(ix.tr[i], 3) + cell(ix.ro[i], 3) + cell(ix.ab[i], 3) + cell(ix.max[i]) +
        cell(ix.dens[i]) + "</tr>");
    }
    ix.el.querySelector("tbody").innerHTML = out.join("");
    document.getElementById("nx-range").textContent = ix.view.length ? (ix.start + 1) + "–" + end + " of " + ix.view.length : "no match";
  }

  /* ---- Prompt views (neuron_explainer.view.prompt_views): every panel's value is page data under its
     kind; the prompt's tokens are data.ex.prompt. Heatmap panels (saliency, factors) use `excerpts`. ---- */
  var PALETTE = ["#1f5fa8", "#e66101", "#1b9e77", "#7570b3", "#d62728", "#66a61e", "#e7298a", "#a6761d"];
  function colour(k) { return PALETTE[k % PALETTE.length]; }
  function quoted(t) { return '"' + esc(shown(t)) + '"'; }
  function select(cls, options, chosen) {
    return '<select class="' + cls + '">' + options.map(function (o) {
      return '<option value="' + esc(o[0]) + '"' + (String(o[0]) === String(chosen) ? " selected" : "") + ">" +
        esc(o[1]) + "</option>";
    }).join("") + "</select>";
  }
  /* rank 1 -> full colour, the largest rank of the grid -> none (log scale) */
  function rankShade(r, worst) {
    var a = 1 - Math.log10(r) / Math.log10(Math.max(worst, 10));
    return "rgba(" + POS + "," + (Math.max(0, a) * 0.85).toFixed(3) + ")";
  }

  /* Logit lens: layers x positions; d = {layers, top [L][T][k], topp, watch, ranks [L][T][W], wprobs, next [L][T-1]} */
  NX.renderers.lens = function (el, d, data) {
    var toks = data.ex.prompt;
    var modes = [["p", "top-1 probability"]];
    d.watch.forEach(function (w, i) { modes.push(["w" + i, "rank of " + JSON.stringify(shown(w))]); });
    modes.push(["n", "rank of the next token"]);
    el.innerHTML = '<div class="nx-controls"><label>Colour by ' + select("nx-lens-mode", modes, "p") +
      '</label></div><div class="nx-scroll"><table class="nx-lens"></table></div>';
    var table = el.querySelector("table");
    var worst = function (mode) {
      var m = 10;
      d.layers.forEach(function (_, l) {
        for (var t = 0; t < toks.length; t++) {
          var r = mode === "n" ? d.next[l][t] : d.ranks[l][t][+mode.slice(1)];
          if (r !== undefined) m = Math.max(m, r);
        }
      });
      return m;
    };
    var draw = function (mode) {
      var out = ["<thead><tr><th></th>"];
      toks.forEach(function (t, i) { out.push('<th class="nx-lens-in" title="position ' + i + '">' + esc(shown(t)) + "</th>"); });
      out.push("</tr></thead><tbody>");
      var w = mode === "p" ? 0 : worst(mode);
      d.layers.forEach(function (layer, l) {
        out.push('<tr><th class="nx-num">layer ' + layer + "</th>");
        for (var t = 0; t < toks.length; t++) {
          var text, bg;
          if (mode === "p") { text = esc(shown(d.top[l][t][0])); bg = shade(d.topp[l][t][0], 1); }
          else {
            var r = mode === "n" ? d.next[l][t] : d.ranks[l][t][+mode.slice(1)];
            text = r === undefined ? "" : String(r);
            bg = r === undefined ? "transparent" : rankShade(r, w);
          }
          out.push('<td class="nx-lens-cell nx-tipped" data-l="' + l + '" data-t="' + t + '" style="background:' + bg + '">' +
            text + "</td>");
        }
        out.push("</tr>");
      });
      out.push('<tr class="nx-lens-nextrow"><th>next token</th>');
      for (var t = 0; t < toks.length; t++) out.push('<td class="nx-lens-next">' + esc(shown(toks[t + 1] || "")) + "</td>");
      table.innerHTML = out.join("") + "</tr></tbody>";
    };
    el.querySelector("select").addEventListener("change", function (ev) { draw(ev.target.value); });
    draw("p");
    el.nxTip = function (cell) {
      var l = +cell.dataset.l, t = +cell.dataset.t;
      var lines = ["<b>layer " + d.layers[l] + ", position " + t + " (after " + quoted(toks[t]) + ")</b>"];
      d.top[l][t].forEach(function (tok, k) { lines.push((k + 1) + ". " + quoted(tok) + " " + fmt(d.topp[l][t][k])); });
      d.watch.forEach(function (w, i) {
        lines.push(quoted(w) + ": rank " + d.ranks[l][t][i] + ", p " + fmt(d.wprobs[l][t][i]));
      });
      if (t + 1 < toks.length) lines.push("next " + quoted(toks[t + 1]) + ": rank " + d.next[l][t]);
      return lines.join("<br>");
    };
  };

  /* Ranks of watched tokens per layer, log scale, rank 1 at the top. d = {layers, watch, ranks [L][W], probs} */
  NX.renderers.rankings = function (el, d) {
    var W = 620, H = 240, L = 48, R = 150, T = 14, B = 32;
    var top = 10;
    d.ranks.forEach(function (row) { row.forEach(function (r) { while (r > top) top *= 10; }); });
    var n = d.layers.length;
    var X = function (i) { return n > 1 ? L + (i / (n - 1)) * (W - L - R) : (L + W - R) / 2; };
    var Y = function (r) { return T + (Math.log10(r) / Math.log10(top)) * (H - T - B); };
    var out = [svgOpen(W, H, "ranks of watched tokens per layer")];
    for (var g = 1; g <= top; g *= 10) {
      out.push('<line class="nx-grid" x1="' + L + '" x2="' + (W - R) + '" y1="' + Y(g).toFixed(1) + '" y2="' + Y(g).toFixed(1) + '"/>');
      out.push(axisText(L - 4, Y(g) + 3, String(g), "end"));
    }
    d.layers.forEach(function (layer, i) { out.push(axisText(X(i), H - B + 14, String(layer))); });
    out.push(axisText((L + W - R) / 2, H - 3, "layer"));
    out.push('<text class="nx-axis" transform="translate(11,' + (H - B) / 2 + ') rotate(-90)" text-anchor="middle">rank</text>');
    d.watch.forEach(function (w, k) {
      var pts = d.ranks.map(function (row, i) { return X(i).toFixed(1) + "," + Y(row[k]).toFixed(1); });
      out.push('<polyline class="nx-rankline" fill="none" stroke="' + colour(k) + '" points="' + pts.join(" ") + '"/>');
      d.ranks.forEach(function (row, i) {
        out.push('<circle class="nx-rankpt" cx="' + X(i).toFixed(1) + '" cy="' + Y(row[k]).toFixed(1) + '" r="3" fill="' +
          colour(k) + '"><title>' + esc(JSON.stringify(shown(w))) + " after layer " + d.layers[i] + ": rank " + row[k] +
          ", p " + fmt(d.probs[i][k]) + "</title></circle>");
      });
      out.push('<text x="' + (W - R + 10) + '" y="' + (T + 12 + 14 * k) + '" fill="' + colour(k) + '" class="nx-legend">' +
        esc(JSON.stringify(shown(w))) + "</text>");
    });
    el.innerHTML = out.join("") + "</svg>";
  };

  /* The largest loadings of each NMF factor. d.loadings[k] = [[layer, neuron, part (+1 / -1), loading], ...] */
  NX.renderers.loadings = function (el, d) {
    el.innerHTML = '<div class="nx-loadings">' + d.loadings.map(function (rows, k) {
      return '<table class="nx-table"><caption>factor ' + k + "</caption>" + rows.map(function (r) {
        return "<tr><td>L" + r[0] + " N" + r[1] + (r[2] < 0 ? " (−)" : "") + '</td><td class="nx-num">' + fmt(r[3]) + "</td></tr>";
      }).join("") + "</table>";
    }).join("") + "</div>";
  };

  /* Explained neurons firing at each token. d = {neurons [[layer, neuron, explanation, score]], at [T][[i, act, norm]],
     best [T], scale, normalized}. Hovering a token lists its neurons; a click pins the list to that token. */
  NX.renderers.firing = function (el, d, data) {
    var toks = data.ex.prompt;
    var out = ['<div class="nx-firing"><div class="nx-row"><span class="nx-toks">'];
    toks.forEach(function (t, i) {
      out.push('<span class="nx-tok" data-i="' + i + '" style="background:' + shade(d.best[i], d.scale) + '">' +
        esc(shown(t)) + "</span>");
    });
    out.push('</span></div><div class="nx-firing-list"></div></div>');
    el.innerHTML = out.join("");
    var list = el.querySelector(".nx-firing-list");
    var pinned = null;
    var show = function (i) {
      var rows = d.at[i].map(function (a, r) {
        var n = d.neurons[a[0]];
        return '<tr><td class="nx-num">' + (r + 1) + '</td><td class="nx-num">L' + n[0] + " N" + n[1] + '</td><td class="nx-num">' +
          fmt(a[1]) + "</td>" + (d.normalized ? '<td class="nx-num">' + fmt(a[2]) + "</td>" : "") + "<td>" + esc(n[2]) +
          '</td><td class="nx-num">' + (n[3] === null ? "–" : (n[3] >= 0 ? "+" : "") + n[3].toFixed(3)) + "</td></tr>";
      });
      list.innerHTML = "<p><b>" + quoted(toks[i]) + "</b> (position " + i + ")</p>" + (rows.length
        ? '<table class="nx-table"><thead><tr><th>#</th><th>neuron</th><th>activation</th>' +
          (d.normalized ? "<th>of max</th>" : "") + "<th>explanation</th><th>score</th></tr></thead><tbody>" +
          rows.join("") + "</tbody></table>"
        : '<p class="nx-note">no explained neuron ranks here</p>');
      el.querySelectorAll(".nx-tok").forEach(function (s) { s.classList.toggle("nx-marked", +s.dataset.i === i); });
    };
    el.addEventListener("mouseover", function (ev) {
      var s = ev.target.closest(".nx-tok");
      if (s && pinned === null) show(+s.dataset.i);
    });
    el.addEventListener("click", function (ev) {
      var s = ev.target.closest(".nx-tok");
      if (!s) return;
      pinned = pinned === +s.dataset.i ? null : +s.dataset.i;
      show(+s.dataset.i);
    });
    var first = 0;
    d.best.forEach(function (v, i) { if (v !== null && (d.best[first] === null || v > d.best[first])) first = i; });
    show(first);
  };

  /* Attention lines of one head, from query tokens (left) to key tokens (right). a = [T][0..q] */
  function attentionLines(a, x0, x1, y, min, stroke, width) {
    var out = [];
    a.forEach(function (row, q) {
      row.forEach(function (p, k) {
        if (p < min) return;
        out.push('<line class="nx-att-line" data-q="' + q + '" data-k="' + k + '" data-p="' + p + '" x1="' + x0 + '" y1="' +
          y(q).toFixed(1) + '" x2="' + x1 + '" y2="' + y(k).toFixed(1) + '" stroke="' + stroke + '" stroke-opacity="' +
          p.toFixed(3) + '" stroke-width="' + width + '"/>');
      });
    });
    return out.join("");
  }

  /* BertViz-style head view. d = {layers, n_heads, min, attn [L][H][T][0..q], sel: [layer, head]} */
  NX.renderers.attention = function (el, d, data) {
    var toks = data.ex.prompt;
    var heads = [];
    for (var h = 0; h < d.n_heads; h++) heads.push('<button type="button" class="nx-headbtn" data-h="' + h + '" style="border-color:' +
      colour(h) + '">head ' + h + "</button>");
    el.innerHTML = '<div class="nx-controls"><label>Layer ' + select("nx-att-layer", d.layers.map(function (l) { return [l, l]; }),
      d.sel[0]) + "</label><span>" + heads.join("") + '</span></div><div class="nx-att"></div>';
    var box = el.querySelector(".nx-att");
    var state = { layer: d.layers.indexOf(d.sel[0]) < 0 ? 0 : d.layers.indexOf(d.sel[0]), head: d.sel[1] };
    var draw = function () {
      var RH = 18, W = 460, xl = 170, xr = 290, H = toks.length * RH + 8;
      var y = function (i) { return 8 + i * RH + RH / 2 - 4; };
      var out = [svgOpen(W, H, "attention of layer " + d.layers[state.layer] + " head " + state.head)];
      toks.forEach(function (t, i) {
        out.push('<text class="nx-att-tok" data-side="q" data-i="' + i + '" x="' + (xl - 6) + '" y="' + (y(i) + 4) +
          '" text-anchor="end">' + esc(shown(t)) + "</text>");
        out.push('<text class="nx-att-tok" data-side="k" data-i="' + i + '" x="' + (xr + 6) + '" y="' + (y(i) + 4) +
          '" text-anchor="start">' + esc(shown(t)) + "</text>");
      });
      out.push(attentionLines(d.attn[state.layer][state.head], xl, xr, y, d.min, colour(state.head), 2));
      box.innerHTML = out.join("") + "</svg>";
      el.querySelector("select").value = String(d.layers[state.layer]);
      el.querySelectorAll(".nx-headbtn").forEach(function (b) {
        b.setAttribute("aria-pressed", String(+b.dataset.h === state.head));
      });
    };
    el.nxSelect = function (l, h) { state.layer = l; state.head = h; draw(); };
    el.querySelector("select").addEventListener("change", function (ev) { state.layer = d.layers.indexOf(+ev.target.value); draw(); });
    el.querySelectorAll(".nx-headbtn").forEach(function (b) {
      b.addEventListener("click", function () { state.head = +b.dataset.h; draw(); });
    });
    box.addEventListener("mouseover", function (ev) {
      var t = ev.target.closest(".nx-att-tok");
      var svg = box.querySelector("svg");
      svg.classList.toggle("nx-focus", !!t);
      box.querySelectorAll(".nx-att-line").forEach(function (line) {
        line.classList.toggle("nx-on", !!t && line.dataset[t.dataset.side] === t.dataset.i);
      });
      box.querySelectorAll(".nx-att-tok").forEach(function (tok) { tok.classList.toggle("nx-on", tok === t); });
    });
    draw();
  };

  /* Model view: small multiples of every shown layer x head; a click opens that head in the head view. */
  NX.renderers.attnmodel = function (el, d, data) {
    var n = data.ex.prompt.length, W = 96, H = Math.max(48, Math.min(160, n * 4));
    var y = function (i) { return 4 + (n > 1 ? (i / (n - 1)) * (H - 8) : (H - 8) / 2); };
    var out = ['<table class="nx-attmodel"><thead><tr><th></th>'];
    for (var h = 0; h < d.n_heads; h++) out.push("<th>head " + h + "</th>");
    out.push("</tr></thead><tbody>");
    d.layers.forEach(function (layer, l) {
      out.push('<tr><th class="nx-num">layer ' + layer + "</th>");
      for (var h = 0; h < d.n_heads; h++) {
        out.push('<td><svg class="nx-svg nx-mini-att" data-l="' + l + '" data-h="' + h + '" viewBox="0 0 ' + W + " " + H +
          '" width="' + W + '" height="' + H + '" role="img" aria-label="layer ' + layer + " head " + h + '">' +
          attentionLines(d.attn[l][h], 6, W - 6, y, d.min, colour(h), 1) + "</svg></td>");
      }
      out.push("</tr>");
    });
    el.innerHTML = '<div class="nx-scroll">' + out.join("") + "</tbody></table></div>";
    el.addEventListener("click", function (ev) {
      var mini = ev.target.closest(".nx-mini-att");
      var head = el.parentNode.querySelector('[data-nx="attention"]');
      if (!mini || !head || !head.nxSelect) return;
      head.nxSelect(+mini.dataset.l, +mini.dataset.h);
      head.scrollIntoView();
    });
  };

  /* One vector as a strip of coloured cells (any length drawn at the same width). The colour grows with the
     square root of |value| / s: a few outlier dimensions (common in q and k) would leave the rest blank. */
  function strip(v, s, label) {
    var out = ['<svg class="nx-strip" viewBox="0 0 ' + v.length + ' 1" preserveAspectRatio="none" width="256" height="14" role="img" aria-label="' +
      esc(label) + '"><title>' + esc(label) + "</title>"];
    v.forEach(function (x, i) {
      var c = s > 0 ? Math.sign(x) * Math.sqrt(Math.abs(x) / s) : 0;
      out.push('<rect x="' + i + '" y="0" width="1" height="1" fill="' + shade(c, 1) + '"/>');
    });
    return out.join("") + "</svg>";
  }

  /* BertViz's neuron view of one head. d = {layer, head, query, queries [T][D], keys [T][D], products [T][D] (at
     d.query), dots [T][T] (q.k), scores [T][T], allowed, probs, scaling, softcap, window}. Products at another
     query are q * k here. */
  NX.renderers.qk = function (el, d, data) {
    var toks = data.ex.prompt;
    var vs = 0;
    d.queries.concat(d.keys).forEach(function (v) { v.forEach(function (x) { vs = Math.max(vs, Math.abs(x)); }); });
    el.innerHTML = '<div class="nx-controls"><label>Query position ' + select("nx-qk-pos", toks.map(function (t, i) {
      return [i, i + ": " + JSON.stringify(shown(t))];
    }), d.query) + '</label></div><div class="nx-scroll nx-qk"></div>';
    var box = el.querySelector(".nx-qk");
    var draw = function (q) {
      var prod = q === d.query ? d.products : d.keys.map(function (k) { return k.map(function (x, i) { return x * d.queries[q][i]; }); });
      var ps = 0;
      prod.forEach(function (v) { v.forEach(function (x) { ps = Math.max(ps, Math.abs(x)); }); });
      var out = ['<table class="nx-table"><thead><tr><th>key</th><th>token</th><th>key vector</th><th>query × key</th>' +
        '<th class="nx-num">q·k</th><th class="nx-num">score</th><th>probability</th></tr></thead><tbody>'];
      out.push('<tr class="nx-qrow"><td class="nx-num">query ' + q + "</td><td>" + quoted(toks[q]) + "</td><td>" +
        strip(d.queries[q], vs, "query " + q) + "</td><td></td><td></td><td></td><td></td></tr>");
      d.keys.forEach(function (k, j) {
        var p = d.probs[q][j];
        out.push('<tr class="nx-qk-row' + (d.allowed[q][j] ? "" : " nx-masked") + '"><td class="nx-num">' + j + "</td><td>" +
          quoted(toks[j]) + "</td><td>" + strip(k, vs, "key " + j) + "</td><td>" + strip(prod[j], ps, "query " + q + " × key " + j) +
          '</td><td class="nx-num">' + fmt(d.dots[q][j]) + '</td><td class="nx-num">' + fmt(d.scores[q][j]) + '</td><td><span class="nx-pbar" style="width:' +
          (p * 80).toFixed(1) + 'px"></span> ' + fmt(p) + "</td></tr>");
      });
      box.innerHTML = out.join("") + "</tbody></table>";
    };
    el.querySelector("select").addEventListener("change", function (ev) { draw(+ev.target.value); });
    draw(d.query);
  };

  function start() {
    tooltip();
    NX.renderAll();
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
