/* kiln's charts, drawn with the vendored uPlot: the rollout report and the dashboard call the same
   code with the same payload (kiln.analysis.report.chart_payload), so both read alike. */
(function () {
  "use strict";
  var C = {canary: "#e8590c", baseline: "#1c7ed6", limit: "#c92a2a", pass: "#2b8a3e",
           fail: "#c92a2a", inconclusive: "#868e96", phase: "#adb5bd", info: "#868e96"};

  function fmtT(t) {
    if (t == null) return "";
    return t >= 60 ? Math.floor(t / 60) + ":" + String(Math.floor(t % 60)).padStart(2, "0")
                   : Math.round(t) + "s";
  }
  function pct(v, digits) { return v == null ? "–" : (100 * v).toFixed(digits) + "%"; }
  function ms(v) { return v == null ? "–" : v.toFixed(v < 10 ? 1 : 0) + " ms"; }

  /* Vertical lines at phase changes and judge decisions; labels on the first chart only. */
  function marks(holder, labels) {
    return {hooks: {draw: [function (u) {
      var ctx = u.ctx, top = u.bbox.top, bottom = u.bbox.top + u.bbox.height;
      var list = holder.payload.marks || [];
      ctx.save();
      ctx.font = (11 * devicePixelRatio) + "px sans-serif";
      for (var i = 0; i < list.length; i++) {
        var m = list[i], x = u.valToPos(m.t, "x", true);
        if (x < u.bbox.left - 1 || x > u.bbox.left + u.bbox.width + 1) continue;
        ctx.strokeStyle = C[m.kind] || C.info;
        ctx.lineWidth = (m.kind === "phase" ? 1 : 1.5) * devicePixelRatio;
        ctx.setLineDash(m.kind === "phase" ? [2 * devicePixelRatio, 3 * devicePixelRatio]
                                          : [5 * devicePixelRatio, 3 * devicePixelRatio]);
        ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, bottom); ctx.stroke();
      }
      var shown = labels ? layout(ctx, u, list) : [];
      holder.labels = holder.labels || {};
      if (labels) holder.labels[u.root.getAttribute("data-key") || ""] = shown.map(function (p) {
        var w = ctx.measureText(p.m.label).width;
        return {label: p.m.label, row: p.row, x0: p.flip ? p.x - w - 4 * devicePixelRatio
                                                         : p.x + 4 * devicePixelRatio,
                x1: p.flip ? p.x - 4 * devicePixelRatio : p.x + w + 4 * devicePixelRatio};
      });
      for (var k = 0; k < shown.length; k++) {
        var p = shown[k];
        ctx.fillStyle = C[p.m.kind] || C.info;
        ctx.textAlign = p.flip ? "right" : "left";
        ctx.fillText(p.m.label, p.x + (p.flip ? -4 : 4) * devicePixelRatio,
                     top + (12 + 13 * p.row) * devicePixelRatio);
      }
      ctx.restore();
    }]}};
  }

  function axes(yLabel, yFmt) {
    return [
      {label: "time since the rollout started", incrs: [1, 2, 5, 10, 15, 30, 60, 120, 300, 600,
                                                         900, 1800, 3600, 7200],
       values: function (u, vs) { return vs.map(fmtT); }},
      {label: yLabel, size: 62, values: function (u, vs) { return vs.map(yFmt); }}
    ];
  }

  /* Points only where a value has no neighbour: a line needs two, and a rollback after one
     look of the judge must still show what it saw. */
  function isolated(u, si) {
    var d = u.data[si], out = [];
    for (var i = 0; i < d.length; i++)
      if (d[i] != null && (i === 0 || d[i - 1] == null) && (i === d.length - 1 || d[i + 1] == null))
        out.push(i);
    return out.length ? out : null;
  }

  function line(label, color, dash, width) {
    return {label: label, stroke: color, fill: undefined, width: width || 2, dash: dash,
            spanGaps: false, points: {show: false, filter: isolated, size: 6, fill: color}};
  }

  /* Legends show the value under the cursor, and the latest one when the cursor is elsewhere
     (instead of "–" everywhere). */
  function latest(fmt) {
    return function (u, v, si, i) {
      if (i == null) {
        var d = u.data[si];
        for (var j = d.length - 1; j >= 0; j--) if (d[j] != null) return fmt(u, d[j], si, j);
      }
      return fmt(u, v, si, i);
    };
  }

  /* Mark labels in up to four rows, each placed in the first row where it overlaps nothing;
     a label with no room is left out (every mark is in the timeline table). */
  function layout(ctx, u, list) {
    var rows = [], placed = [], left = u.bbox.left, right = u.bbox.left + u.bbox.width;
    var pad = 6 * devicePixelRatio;
    for (var i = 0; i < list.length; i++) {
      var x = u.valToPos(list[i].t, "x", true), w = ctx.measureText(list[i].label).width;
      if (x < left - 1 || x > right + 1) continue;
      var flip = x + w + pad > right, x0 = flip ? x - w - pad : x, x1 = flip ? x : x + w + pad;
      for (var r = 0; r < 4; r++) {
        if (rows[r] == null || rows[r] < x0) {
          rows[r] = x1;
          placed.push({m: list[i], x: x, flip: flip, row: r});
          break;
        }
      }
    }
    return placed;
  }

  function specs(p) {
    var can = "canary " + p.names.canary, base = "baseline " + (p.names.baseline || "–");
    var stepped = uPlot.paths && uPlot.paths.stepped ? uPlot.paths.stepped({align: 1}) : undefined;
    return [
      {key: "split", title: "Traffic split",
       series: [
         {label: base, stroke: C.baseline, fill: C.baseline + "66", width: 1, paths: stepped,
          points: {show: false}, value: function (u, v, si, i) {
            var w = i == null ? null : u.data[2][i];
            return w == null ? "–" : (100 - w) + "%"; }},
         {label: can, stroke: C.canary, fill: C.canary, width: 1, paths: stepped,
          points: {show: false}, value: function (u, v) { return v == null ? "–" : v + "%"; }},
         /* A mirror step serves no one (weight 0): the share copied to the canary. */
         {label: "mirrored to canary", stroke: C.canary, dash: [6, 4], width: 2, paths: stepped,
          points: {show: false}, value: function (u, v) {
            return v == null ? "–" : "mirror " + v + "%"; }}],
       data: function (p) { return [p.t, p.weight.map(function (w) {
         return w == null ? null : 100; }), p.weight,
         p.mirror || p.t.map(function () { return null; })]; },
       axes: axes("share of traffic", function (v) { return v + "%"; }),
       range: [0, 100], labels: true},
      {key: "errors", title: "Error rate (" + p.window + " s window)",
       series: [
         line(can, C.canary), line(base, C.baseline),
         line("limit (judge)", C.limit, [6, 4], 1.5)],
       data: function (p) { return [p.t, p.err.canary, p.err.baseline, p.err.limit]; },
       axes: axes("error rate", function (v) { return pct(v, v < 0.1 ? 1 : 0); }),
       value: function (u, v) { return pct(v, 2); }, range: null, labels: false},
      {key: "latency", title: "Latency (p50 solid, p95 dashed)",
       series: [
         line(can + " p50", C.canary), line(base + " p50", C.baseline),
         line(can + " p95", C.canary, [6, 4], 1.5), line(base + " p95", C.baseline, [6, 4], 1.5),
         line("limit p50 (judge)", C.limit, [2, 3], 1.5)],
       data: function (p) { return [p.t, p.lat.canary_p50, p.lat.baseline_p50, p.lat.canary_p95,
                                   p.lat.baseline_p95, p.lat.limit]; },
       axes: axes("latency (ms)", function (v) { return v + " ms"; }),
       value: function (u, v) { return ms(v); }, range: null, labels: false}
    ];
  }

  function render(el, payload) {
    var holder = {payload: payload, charts: [], specs: specs(payload)};
    var width = Math.max(320, (el.clientWidth || 900) - 8);
    holder.specs.forEach(function (s) {
      var box = document.createElement("section");
      box.className = "chart";
      box.setAttribute("data-chart", s.key);
      var h = document.createElement("h2");
      h.textContent = s.title;
      box.appendChild(h);
      el.appendChild(box);
      var series = [{label: "t", value: latest(function (u, v) { return fmtT(v); })}].concat(
        s.series.map(function (x) {
          if (s.value && !x.value) x.value = s.value;
          if (x.value) x.value = latest(x.value);
          return x;
        }));
      var opts = {width: width, height: 220, series: series, axes: s.axes,
                  scales: {x: {time: false}, y: s.range ? {range: s.range} : {auto: true,
                    range: function (u, lo, hi) { return [0, hi > 0 ? hi * 1.1 : 1]; }}},
                  cursor: {drag: {x: false, y: false}},
                  plugins: [marks(holder, s.labels)]};
      var chart = new uPlot(opts, s.data(payload), box);
      chart.root.setAttribute("data-key", s.key);
      holder.charts.push(chart);
    });
    return holder;
  }

  function update(holder, payload) {
    holder.payload = payload;
    holder.specs.forEach(function (s, i) { holder.charts[i].setData(s.data(payload)); });
  }

  window.KilnCharts = {render: render, update: update, fmtT: fmtT};
})();
