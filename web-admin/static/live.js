// Live progress on a message's report: the counts table and the chart are replaced by the
// server's newer renderings as Server-Sent Events arrive. Without JavaScript the page refreshes itself
// (see the <noscript> in the report) instead.
(function () {
  var table = document.querySelector("[data-live]");
  if (!table || !window.EventSource) return;
  var source = new EventSource(table.getAttribute("data-live"));
  source.addEventListener("counts", function (event) {
    var holder = document.createElement("div");
    holder.innerHTML = event.data;
    var fresh = holder.firstElementChild;
    var current = document.querySelector("[data-live]");
    if (fresh && current) current.replaceWith(fresh);
  });
  source.addEventListener("chart", function (event) {
    var chart = document.getElementById("chart");
    if (chart) chart.innerHTML = event.data;
  });
  source.addEventListener("done", function () { source.close(); });
})();
