/* birddet report: draws the results embedded in data.js (window.BIRDDET_REPORT); no libraries, nothing fetched.
 * Boxes are positioned in percent of their image, so the score slider only re-renders DOM, never images.
 * Detection d = [x, y, w, h (normalised), score, category index, name index, [[name index, probability], ...]];
 * ground truth g = [x, y, w, h, category index, crowd]. Eval matching follows COCO at IoU 0.5: detections at or
 * above the threshold, by descending score, each claim the unclaimed same-class box of highest IoU; a detection
 * that matches nothing but lies inside a crowd region is ignored (as pycocotools does). */
(function () {
  "use strict";
  var R = window.BIRDDET_REPORT;
  var PAGE = 120;
  var EVAL = R.kind === "eval";
  var state = { thr: 0.5, species: "", category: "", deployment: "", event: "", sort: EVAL ? "worst" : "score",
    order: [], shown: PAGE, detail: -1 };
  var $ = function (id) { return document.getElementById(id); };

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") node.textContent = attrs[k];
      else if (k === "style") node.style.cssText = attrs[k];
      else node.setAttribute(k, attrs[k]);
    });
    (children || []).forEach(function (c) { if (c) node.appendChild(c); });
    return node;
  }
  function fmt(v) { return v < 0 ? "n/a" : v.toFixed(3); }

  // -- matching (eval) ----------------------------------------------------------------------------------------------
  function iou(a, b) {
    var ix = Math.max(0, Math.min(a[0] + a[2], b[0] + b[2]) - Math.max(a[0], b[0]));
    var iy = Math.max(0, Math.min(a[1] + a[3], b[1] + b[3]) - Math.max(a[1], b[1]));
    var inter = ix * iy, union = a[2] * a[3] + b[2] * b[3] - inter;
    return union > 0 ? inter / union : 0;
  }
  function ioa(det, region) {
    var ix = Math.max(0, Math.min(det[0] + det[2], region[0] + region[2]) - Math.max(det[0], region[0]));
    var iy = Math.max(0, Math.min(det[1] + det[3], region[1] + region[3]) - Math.max(det[1], region[1]));
    var area = det[2] * det[3];
    return area > 0 ? ix * iy / area : 0;
  }
  /* -> {det: [status per detection: "tp" | "fp" | "ignored" | null (under threshold)], miss: [gt indices]} */
  function match(im, thr, anyClass) {
    var g = im.g || [], status = im.d.map(function () { return null; }), claimed = g.map(function () { return false; });
    var order = im.d.map(function (d, i) { return i; }).filter(function (i) { return im.d[i][4] >= thr; });
    order.sort(function (a, b) { return im.d[b][4] - im.d[a][4]; });
    order.forEach(function (i) {
      var d = im.d[i], best = -1, bestIou = R.iou;
      g.forEach(function (t, j) {
        if (claimed[j] || t[5] || (!anyClass && t[4] !== d[5])) return;
        var v = iou(d, t);
        if (v >= bestIou) { bestIou = v; best = j; }
      });
      if (best >= 0) { claimed[best] = true; status[i] = anyClass ? best : "tp"; return; }
      var inCrowd = g.some(function (t) { return t[5] && ioa(d, t) >= R.iou; });
      status[i] = inCrowd ? "ignored" : (anyClass ? -1 : "fp");
    });
    var miss = [];
    g.forEach(function (t, j) { if (!t[5] && !claimed[j]) miss.push(j); });
    return { det: status, miss: miss };
  }

  // -- filtering and sorting ----------------------------------------------------------------------------------------
  function kept(im) { return im.d.filter(function (d) { return d[4] >= state.thr; }); }
  function passes(im) {
    if (state.deployment !== "" && String(im.dep) !== state.deployment) return false;
    if (state.event !== "" && String(im.ev) !== state.event) return false;
    var dets = kept(im);
    if (state.species !== "") {
      var sp = Number(state.species);
      var hit = dets.some(function (d) { return d[EVAL ? 5 : 6] === sp; });
      if (EVAL) hit = hit || (im.g || []).some(function (t) { return t[4] === sp; });
      if (!hit) return false;
    }
    if (state.category !== "") {
      var c = Number(state.category);
      if (!dets.some(function (d) { return d[5] === c; })) return false;
    }
    return true;
  }
  function topScore(im) { return im.d.reduce(function (m, d) { return Math.max(m, d[4]); }, 0); }
  function errors(im) {
    var m = match(im, state.thr, false);
    return m.miss.length + m.det.filter(function (s) { return s === "fp"; }).length;
  }
  function order() {
    var idx = [];
    R.images.forEach(function (im, i) { if (passes(im)) idx.push(i); });
    var keyOf = {
      score: function (i) { return -topScore(R.images[i]); },
      count: function (i) { return -kept(R.images[i]).length; },
      worst: function (i) { return -errors(R.images[i]); },
      time: function () { return 0; },
      file: function () { return 0; }
    }[state.sort];
    var keys = {};
    idx.forEach(function (i) { keys[i] = keyOf(i); });
    var key = function (i) { return keys[i]; };
    var tie = state.sort === "time"
      ? function (a, b) { var ta = R.images[a].t || "", tb = R.images[b].t || ""; return ta < tb ? -1 : ta > tb ? 1 : cmpFile(a, b); }
      : cmpFile;
    idx.sort(function (a, b) { return (key(a) - key(b)) || tie(a, b); });
    return idx;
  }
  function cmpFile(a, b) { var fa = R.images[a].f, fb = R.images[b].f; return fa < fb ? -1 : fa > fb ? 1 : 0; }

  // -- drawing ------------------------------------------------------------------------------------------------------
  function boxDiv(b, cls, label) {
    var div = el("div", { "class": "box " + cls, style: "left:" + b[0] * 100 + "%;top:" + b[1] * 100 + "%;width:" +
      b[2] * 100 + "%;height:" + b[3] * 100 + "%" });
    if (label) div.appendChild(el("span", { text: label }));
    return div;
  }
  function detLabel(d) { return R.names[d[6]] + " " + d[4].toFixed(2); }
  function frameFor(im, frame, labels) {
    frame.textContent = "";
    if (im.p) frame.appendChild(el("img", { src: im.p, alt: im.f, loading: "lazy", decoding: "async" }));
    else frame.appendChild(el("div", { "class": "placeholder", text: "no preview: " + (im.x || "image not found") }));
    if (!im.p) return;
    if (EVAL) {
      var m = match(im, state.thr, false);
      im.d.forEach(function (d, i) {
        if (m.det[i] === "tp" || m.det[i] === "fp") frame.appendChild(boxDiv(d, "det " + m.det[i], labels && detLabel(d)));
      });
      m.miss.forEach(function (j) {
        var t = im.g[j];
        frame.appendChild(boxDiv(t, "gt miss", labels && "missed " + R.categories[t[4]]));
      });
    } else {
      kept(im).forEach(function (d) { frame.appendChild(boxDiv(d, "det", labels && detLabel(d))); });
    }
  }
  function caption(im) {
    var dets = kept(im), parts = [im.f];
    if (EVAL) {
      var m = match(im, state.thr, false);
      var tp = m.det.filter(function (s) { return s === "tp"; }).length;
      var fp = m.det.filter(function (s) { return s === "fp"; }).length;
      var cap = el("figcaption", { text: im.f + " " });
      [["tp", tp], ["fp", fp], ["miss", m.miss.length]].forEach(function (p) {
        cap.appendChild(el("span", { "class": "tag " + p[0], text: p[0] + " " + p[1] }));
      });
      return cap;
    }
    parts.push(dets.length + " box" + (dets.length === 1 ? "" : "es"));
    if (dets.length) parts.push("top " + topScore(im).toFixed(2));
    if (im.t) parts.push(im.t);
    return el("figcaption", { text: parts.join(" \u00b7 ") });
  }
  function renderGrid() {
    var grid = $("grid");
    grid.textContent = "";
    state.order.slice(0, state.shown).forEach(function (i, pos) {
      var im = R.images[i], frame = el("div", { "class": "frame" });
      frameFor(im, frame, false);
      if (im.w && im.h) {  // reserve the image's shape before it loads; tall images no wider than a square
        frame.style.aspectRatio = im.w + " / " + im.h;
        frame.style.width = "min(100%, " + Math.round(240 * im.w / im.h) + "px)";
      }
      var card = el("figure", { "class": "card", tabindex: "0", "data-index": String(i) }, [frame, caption(im)]);
      card.addEventListener("click", function () { openDetail(pos); });
      card.addEventListener("keydown", function (e) { if (e.key === "Enter") openDetail(pos); });
      grid.appendChild(card);
    });
    $("more").hidden = state.order.length <= state.shown;
    $("shown-count").textContent = state.order.length + " of " + R.images.length + " images match";
  }

  // -- tables -------------------------------------------------------------------------------------------------------
  function table(head, rows, id) {
    var t = el("table", id ? { id: id } : {});
    t.appendChild(el("tr", {}, head.map(function (h) { return el("th", { text: h }); })));
    rows.forEach(function (r) {
      t.appendChild(el("tr", {}, r.map(function (c) {
        return c instanceof Node ? c : el("td", { text: String(c) });
      })));
    });
    return t;
  }
  function speciesTable() {
    var dets = {}, imgs = {}, seen = {};
    for (var k = 0; k < R.all.s.length; k++) {
      if (R.all.s[k] < state.thr) continue;
      var n = R.all.n[k];
      dets[n] = (dets[n] || 0) + 1;
      var key = n + ":" + R.all.im[k];
      if (!seen[key]) { seen[key] = 1; imgs[n] = (imgs[n] || 0) + 1; }
    }
    var rows = Object.keys(dets).sort(function (a, b) { return dets[b] - dets[a]; }).map(function (n) {
      return [R.names[n], dets[n], imgs[n]];
    });
    return [el("h2", { text: "Per species, all " + R.total + " images, score \u2265 " + state.thr.toFixed(2) }),
      table(["species", "detections", "images"], rows, "species-table")];
  }
  function evalTables() {
    var out = [], M = R.metrics || {}, totals = { tp: 0, fp: 0, miss: 0 };
    var K = R.categories.length, cm = [];
    for (var r = 0; r <= K; r++) { cm.push([]); for (var c = 0; c <= K; c++) cm[r].push(0); }
    R.images.forEach(function (im) {
      var m = match(im, state.thr, false);
      m.det.forEach(function (s) { if (s === "tp" || s === "fp") totals[s]++; });
      totals.miss += m.miss.length;
      var x = match(im, state.thr, true);  // any-class matching: mix-ups land off the diagonal
      x.det.forEach(function (s, i) {
        if (s === null || s === "ignored") return;
        cm[s === -1 ? K : im.g[s][4]][im.d[i][5]]++;
      });
      x.miss.forEach(function (j) { cm[im.g[j][4]][K]++; });
    });
    var p = totals.tp + totals.fp ? totals.tp / (totals.tp + totals.fp) : 0;
    var rc = totals.tp + totals.miss ? totals.tp / (totals.tp + totals.miss) : 0;
    out.push(el("h2", { text: "At IoU " + R.iou + " and score \u2265 " + state.thr.toFixed(2) + " (images shown)" }));
    out.push(table(["", "true positives", "false positives", "misses", "precision", "recall"],
      [["all classes", totals.tp, totals.fp, totals.miss, p.toFixed(3), rc.toFixed(3)]], "eval-totals"));
    if (M.per_class) {
      out.push(el("h2", { text: "Average precision per class (COCO, from metrics.json)" }));
      var rows = M.per_class.map(function (c) { return [c.name, c.num_gt, fmt(c.AP), fmt(c.AP50), fmt(c.AR100)]; });
      if (M.stats) rows.push(["all", "", fmt(M.stats.AP), fmt(M.stats.AP50), ""]);
      out.push(table(["class", "ground truth", "AP", "AP50", "AR100"], rows, "ap-table"));
    }
    if (M.two_stage && M.two_stage.classifier_top1 !== null && M.two_stage.classifier_top1 !== undefined) {
      out.push(el("p", { text: "Species scored as " + M.two_stage.score + "; classifier top-1 on the " +
        M.two_stage.classifier_matched + " matched detections: " + M.two_stage.classifier_top1.toFixed(3) }));
    }
    out.push(el("h2", { text: "Confusion matrix (rows ground truth, columns predicted; score \u2265 " +
      state.thr.toFixed(2) + ", IoU \u2265 " + R.iou + ")" }));
    var names = R.categories.concat(["background"]);
    out.push(table(["ground truth \\ predicted"].concat(names), cm.map(function (row, r) {
      return [names[r]].concat(row.map(function (v, c) {
        return el("td", { "class": r === c && r < K ? "diag" : "", text: String(v) });
      }));
    }), "confusion"));
    var plots = Object.keys(R.plots || {}).filter(function (k) { return k.indexOf("pr_curve") === 0; });
    if (plots.length) {
      out.push(el("h2", { text: "Precision-recall curves" }));
      out.push(el("div", { "class": "plots" }, plots.map(function (k) { return el("img", { src: R.plots[k], alt: k }); })));
    }
    return out;
  }
  function renderTables() {
    var box = $("tables");
    box.textContent = "";
    (EVAL ? evalTables() : speciesTable()).forEach(function (n) { box.appendChild(n); });
  }
  function renderGallery() {
    var box = $("gallery"), groups = {};
    if (!EVAL) return;
    R.images.forEach(function (im, i) {
      Object.keys(im.c || {}).forEach(function (k) {
        var d = im.d[Number(k)];
        (groups[d[5]] = groups[d[5]] || []).push([im, d, im.c[k]]);
      });
    });
    if (!Object.keys(groups).length) return;
    box.appendChild(el("h2", { text: "Crops per species: the classifier's top-1 and its probability (red: the " +
      "bird it overlaps at IoU \u2265 " + R.iou + " is another species, or none)" }));
    Object.keys(groups).forEach(function (c) {
      box.appendChild(el("h3", { text: R.categories[c] }));
      box.appendChild(el("div", { "class": "gallery-row" }, groups[c].map(function (e) {
        var im = e[0], d = e[1], best = -1, bestIou = R.iou;
        (im.g || []).forEach(function (t, j) { var v = iou(d, t); if (!t[5] && v >= bestIou) { bestIou = v; best = j; } });
        var truth = best >= 0 ? R.categories[im.g[best][4]] : "no bird";
        var prob = d[7].length ? d[7][0][1] : d[4];
        return el("figure", { "class": "crop" + (truth === R.categories[c] ? "" : " wrong"), title: im.f }, [
          el("img", { src: e[2], alt: R.categories[c], loading: "lazy" }),
          el("figcaption", { text: R.categories[c] + " p=" + prob.toFixed(2) + " \u00b7 true: " + truth })]);
      })));
    });
  }

  // -- detail view --------------------------------------------------------------------------------------------------
  function openDetail(pos) {
    if (pos < 0 || pos >= state.order.length) return;
    state.detail = pos;
    var im = R.images[state.order[pos]];
    $("detail").hidden = false;
    $("detail-title").textContent = (pos + 1) + " / " + state.order.length + "  " + im.f + (im.t ? "  " + im.t : "");
    frameFor(im, $("detail-frame"), true);
    var img = $("detail-frame").querySelector("img");
    if (img) {
      img.removeAttribute("loading");
      if (im.w && im.h) {  // as large as the screen allows, in the image's shape, so boxes sit on it exactly
        var scale = Math.min(window.innerWidth * 0.66 / im.w, window.innerHeight * 0.85 / im.h);
        img.style.width = Math.round(im.w * scale) + "px";
        img.style.height = Math.round(im.h * scale) + "px";
      }
    }
    var status = EVAL ? match(im, state.thr, false).det : [];
    var rows = im.d.map(function (d, i) { return [i, d]; }).filter(function (e) { return e[1][4] >= state.thr; })
      .sort(function (a, b) { return b[1][4] - a[1][4]; }).map(function (e) {
        var d = e[1], topk = d[7].map(function (p) { return R.names[p[0]] + " " + p[1].toFixed(3); }).join(", ");
        var row = [R.categories[d[5]], R.names[d[6]], d[4].toFixed(3), topk || "\u2013"];
        if (EVAL) row.push(status[e[0]] || "");
        return row;
      });
    var info = $("detail-info");
    info.textContent = "";
    var head = ["category", "species", "score", "top-k probabilities"];
    info.appendChild(table(EVAL ? head.concat(["match"]) : head, rows, "detail-boxes"));
    if (EVAL) {
      var miss = match(im, state.thr, false).miss.map(function (j) { return [R.categories[im.g[j][4]]]; });
      info.appendChild(table(["missed ground truth"], miss));
    }
    info.appendChild(el("p", { text: "\u2190 \u2192 previous / next, Esc closes" }));
  }
  function closeDetail() { $("detail").hidden = true; state.detail = -1; }

  // -- controls -----------------------------------------------------------------------------------------------------
  function fill(select, names, wrap) {
    names.forEach(function (n, i) { select.appendChild(el("option", { value: String(i), text: n })); });
    if (wrap) $(wrap).hidden = names.length === 0;
  }
  function refresh() {
    state.order = order();
    renderGrid();
    renderTables();
    if (state.detail >= 0) openDetail(Math.min(state.detail, state.order.length - 1));
  }
  function setup() {
    $("title").textContent = (EVAL ? "Evaluation" : "Predictions") + " report \u2013 " + R.source;
    $("summary").textContent = R.total + " images read from " + R.read_from + (R.failed ? ", " + R.failed +
      " failed" : "") + "; made " + R.created + ".";
    if (R.images.length < R.total) {
      $("sample-note").hidden = false;
      $("sample-note").textContent = "This is a sample: " + R.images.length + " of " + R.total + " images, " +
        "stratified by species and confidence (see --max-images). The per-species table counts all images.";
    }
    fill($("filter-species"), EVAL ? R.categories : R.names);
    fill($("filter-category"), EVAL ? [] : R.categories, "category-wrap");
    fill($("filter-deployment"), R.deployments, "deployment-wrap");
    fill($("filter-event"), R.events, "event-wrap");
    var sorts = EVAL ? [["worst", "worst first"], ["score", "top score"], ["file", "file"]]
      : [["score", "top score"], ["count", "count"], ["time", "time"]];
    sorts.forEach(function (s) { $("sort").appendChild(el("option", { value: s[0], text: s[1] })); });
    $("legend").textContent = "";
    if (EVAL) [["tp", "true positive"], ["fp", "false positive"], ["miss", "missed"]].forEach(function (p) {
      $("legend").appendChild(el("span", { "class": "tag " + p[0], text: p[1] }));
    });
    $("threshold").addEventListener("input", function () {
      state.thr = Number($("threshold").value);
      $("threshold-value").textContent = state.thr.toFixed(2);
      refresh();
    });
    [["filter-species", "species"], ["filter-category", "category"], ["filter-deployment", "deployment"],
      ["filter-event", "event"], ["sort", "sort"]].forEach(function (p) {
      $(p[0]).addEventListener("change", function () { state[p[1]] = $(p[0]).value; state.shown = PAGE; refresh(); });
    });
    $("more").addEventListener("click", function () { state.shown += PAGE; renderGrid(); });
    $("detail-close").addEventListener("click", closeDetail);
    $("detail-prev").addEventListener("click", function () { openDetail(state.detail - 1); });
    $("detail-next").addEventListener("click", function () { openDetail(state.detail + 1); });
    document.addEventListener("keydown", function (e) {
      if (state.detail < 0) return;
      if (e.key === "Escape") closeDetail();
      else if (e.key === "ArrowRight") openDetail(state.detail + 1);
      else if (e.key === "ArrowLeft") openDetail(state.detail - 1);
    });
    state.thr = Number($("threshold").value);
    $("threshold-value").textContent = state.thr.toFixed(2);
  }

  setup();
  refresh();
  renderGallery();
  performance.mark("birddet-first-screen");  // the browser test reads this: the first screen is in the DOM
})();
