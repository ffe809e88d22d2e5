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
  };

  /* One tooltip for the page: the token and each row's value at that position. */
  function tooltip() {
    var tip = document.createElement("div");
    tip.id = "nx-tip";
    tip.setAttribute("role", "tooltip");
    document.body.appendChild(tip);
    document.addEventListener("mouseover", function (ev) {
      var span = ev.target.closest ? ev.target.closest(".nx-tok") : null;
      var host = span && span.closest("[data-nx]");
      if (!host || !host.nxGroup) { tip.style.display = "none"; return; }
      var item = host.nxGroup.items[+span.dataset.e];
      var i = +span.dataset.i;
      var toks = item.t || host.nxData.ex[item.id] || [];
      var lines = ['<b>"' + esc(shown(toks[i + (item.o || 0)] || "")) + '"</b>'];
      item.rows.forEach(function (row) { lines.push(esc(row.n) + ": " + fmt(row.v[i])); });
      tip.innerHTML = lines.join("<br>");
      var box = span.getBoundingClientRect();
      tip.style.display = "block";
      tip.style.left = Math.max(4, box.left + window.scrollX) + "px";
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

  function start() {
    tooltip();
    NX.renderAll();
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
