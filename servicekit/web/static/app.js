/* IPJMS pages: the only script of the pages (no inline script: the CSP forbids it).
   - every htmx request carries the session's CSRF token (X-CSRF-Token header);
   - [data-sse] opens an EventSource and, on each event, triggers "refresh" on the element
     named by data-refresh (htmx then fetches the new fragment from the server);
   - [data-chart] draws a uPlot trend chart from its data-series JSON, with the goal band and
     the plan's changes marked. */
(function () {
  "use strict";

  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  document.addEventListener("htmx:configRequest", function (evt) {
    evt.detail.headers["X-CSRF-Token"] = csrfToken();
  });

  function openStreams(root) {
    root.querySelectorAll("[data-sse]").forEach(function (el) {
      if (el.dataset.sseOpen) { return; }
      el.dataset.sseOpen = "1";
      var source = new EventSource(el.dataset.sse);
      var target = document.getElementById(el.dataset.refresh);
      source.addEventListener("alert", function () {
        if (target && window.htmx) { window.htmx.trigger(target, "refresh"); }
        var status = document.getElementById("live-status");
        if (status) { status.textContent = status.dataset.newAlert || "new alert"; }
      });
      source.addEventListener("open", function () { el.dataset.sseState = "open"; });
      source.addEventListener("error", function () { el.dataset.sseState = "retrying"; });
    });
  }

  function bandPlugin(band, marks) {
    return {
      hooks: {
        drawAxes: [function (u) {
          var ctx = u.ctx;
          ctx.save();
          if (band) {
            var top = u.valToPos(band[1], "y", true);
            var bottom = u.valToPos(band[0], "y", true);
            ctx.fillStyle = "rgba(46, 125, 50, 0.12)";
            ctx.fillRect(u.bbox.left, top, u.bbox.width, bottom - top);
          }
          (marks || []).forEach(function (t) {
            var x = u.valToPos(t, "x", true);
            ctx.strokeStyle = "#8e24aa";
            ctx.setLineDash([4, 4]);
            ctx.beginPath();
            ctx.moveTo(x, u.bbox.top);
            ctx.lineTo(x, u.bbox.top + u.bbox.height);
            ctx.stroke();
          });
          ctx.restore();
        }]
      }
    };
  }

  function drawCharts(root) {
    if (!window.uPlot) { return; }
    root.querySelectorAll("[data-chart]").forEach(function (el) {
      if (el.dataset.drawn) { return; }
      el.dataset.drawn = "1";
      var spec = JSON.parse(el.dataset.series);
      var colours = ["#1565c0", "#c62828", "#2e7d32"];
      var series = [{}];
      var data = [spec.t];
      spec.series.forEach(function (s, i) {
        series.push({ label: s.label, stroke: colours[i % colours.length], width: 2,
                      points: { show: true } });
        data.push(s.values);
      });
      var width = Math.max(280, Math.min(el.clientWidth || 600, 720));
      var values = [];
      spec.series.forEach(function (s) { s.values.forEach(function (v) { if (v !== null) { values.push(v); } }); });
      if (spec.band) { values.push(spec.band[0], spec.band[1]); }
      var lo = Math.min.apply(null, values), hi = Math.max.apply(null, values);
      var pad = (hi - lo) * 0.1 || 1;
      new window.uPlot({
        width: width, height: 220,
        scales: { y: { range: [lo - pad, hi + pad] } },
        series: series,
        plugins: [bandPlugin(spec.band, spec.marks)]
      }, data, el);
    });
  }

  function init(root) { openStreams(root); drawCharts(root); }

  document.addEventListener("DOMContentLoaded", function () { init(document); });
  document.addEventListener("htmx:load", function (evt) { init(evt.detail.elt); });
})();
