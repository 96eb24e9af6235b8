// Health Vault console: the only script besides htmx (served from 'self'; the CSP allows no inline script).
// Upload progress, and the break-glass countdown. Nothing here reads or stores PHI (no browser storage at all).
(function () {
  "use strict";
  document.addEventListener("htmx:xhr:progress", function (event) {
    var bar = document.getElementById("upload-progress");
    if (bar && event.detail && event.detail.lengthComputable) {
      var percent = Math.round((event.detail.loaded / event.detail.total) * 100);
      bar.value = percent;
      bar.textContent = percent + "%";
    }
  });
  document.addEventListener("htmx:beforeRequest", function (event) {
    var bar = document.getElementById("upload-progress");
    if (bar && event.detail.elt && event.detail.elt.id === "upload-form") { bar.value = 0; }
  });
  function tick() {
    var nodes = document.querySelectorAll(".countdown[data-expires]");
    nodes.forEach(function (node) {
      var left = Math.max(0, Math.floor((Number(node.dataset.expires) - Date.now()) / 1000));
      var minutes = Math.floor(left / 60), seconds = left % 60;
      node.textContent = minutes + ":" + (seconds < 10 ? "0" : "") + seconds;
    });
  }
  document.addEventListener("DOMContentLoaded", function () {
    if (document.querySelector(".countdown[data-expires]")) { tick(); setInterval(tick, 1000); }
  });
})();
