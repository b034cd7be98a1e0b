/* kiln serve's dashboard: the page is complete without this script; with it, every server-sent
   event swaps in the new board and redraws the live charts in place. */
(function () {
  "use strict";
  var holders = {};
  window.KilnDashboard = {holders: holders};
  function csrf() {
    var m = document.querySelector('meta[name="kiln-csrf"]');
    return m ? m.content : "";
  }
  function place(charts) {
    var slots = document.querySelectorAll("[data-chart-for]");
    for (var i = 0; i < slots.length; i++) {
      var slot = slots[i], svc = slot.getAttribute("data-chart-for"), p = charts[svc];
      if (!p) continue;
      var h = holders[svc];
      if (h && h.canary !== p.names.canary) h = null;
      if (!h) {
        var el = document.createElement("div");
        el.className = "charts";
        slot.appendChild(el);
        holders[svc] = {el: el, canary: p.names.canary, chart: KilnCharts.render(el, p)};
      } else {
        if (h.el.parentNode !== slot) slot.appendChild(h.el);
        KilnCharts.update(h.chart, p);
      }
    }
  }
  function openDetails(root) {
    var out = {}, ds = root.querySelectorAll("[data-service] details[open]");
    for (var i = 0; i < ds.length; i++) out[ds[i].closest("[data-service]").dataset.service] = 1;
    return out;
  }
  function readOnly(root) {  // no token, no buttons (the server renders the first board so)
    if (csrf()) return;
    var fs = root.querySelectorAll("form");
    for (var i = 0; i < fs.length; i++) fs[i].parentNode.removeChild(fs[i]);
  }
  document.addEventListener("submit", function (ev) {  // destructive actions ask first
    var f = ev.target, ask = f.getAttribute && f.getAttribute("data-confirm");
    if (!ask) return;
    if (!window.confirm(ask)) { ev.preventDefault(); return; }
    if (!f.querySelector('input[name="confirmed"]')) {
      var i = document.createElement("input");
      i.type = "hidden"; i.name = "confirmed"; i.value = "yes";
      f.appendChild(i);
    }
  });
  place(JSON.parse(document.getElementById("kiln-charts").textContent));
  if (!window.EventSource) return;
  var lastBoard = null;
  var es = new EventSource("/events");
  es.addEventListener("board", function (ev) {
    var d = JSON.parse(ev.data), board = document.getElementById("board");
    if (d.board !== lastBoard) {  // charts move every second; the rest only on a change
      lastBoard = d.board;
      var open = openDetails(board);
      board.innerHTML = d.board.split("__KILN_CSRF__").join(csrf());
      readOnly(board);
      for (var svc in open) {
        var det = board.querySelector('[data-service="' + svc + '"] details');
        if (det) det.open = true;
      }
    }
    place(JSON.parse(d.charts));
    document.getElementById("live").textContent = "version " + d.version;
    document.body.setAttribute("data-version", String(d.version));
  });
})();
