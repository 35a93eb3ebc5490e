/* Niyra dashboard behaviour: the spend chart, the copy button, and clear messages when an htmx
 * request fails. No inline scripts anywhere: data comes from json_script elements. */
(function () {
  "use strict";

  var SWATCHES = ["#3b4cca", "#12a4b6", "#e0912f", "#9b59d0", "#c2549d", "#4d9d4a", "#7b8494"];

  function drawSpendChart() {
    var canvas = document.getElementById("spend-chart");
    var data = document.getElementById("spend-data");
    if (!canvas || !data || typeof window.Chart === "undefined") return;
    var spend = JSON.parse(data.textContent);
    new window.Chart(canvas, {
      type: "bar",
      data: {
        labels: spend.labels,
        datasets: [{
          label: "Credits spent",
          data: spend.credits,
          backgroundColor: SWATCHES,
          borderRadius: 4,
          maxBarThickness: 26
        }]
      },
      options: {
        indexAxis: "y",
        responsive: true,
        maintainAspectRatio: false,
        animation: false,
        plugins: {
          legend: { display: false },
          tooltip: {
            callbacks: {
              label: function (context) {
                return " " + context.parsed.x.toLocaleString(undefined, { minimumFractionDigits: 3, maximumFractionDigits: 3 }) + " credits";
              }
            }
          }
        },
        scales: {
          x: { beginAtZero: true, grid: { color: "#ececf2" }, ticks: { color: "#6b6b78" } },
          y: { grid: { display: false }, ticks: { color: "#17171c" } }
        }
      }
    });
  }

  function wireCopyButtons(root) {
    var buttons = (root || document).querySelectorAll("[data-copy-target]");
    Array.prototype.forEach.call(buttons, function (button) {
      if (button.dataset.wired) return;
      button.dataset.wired = "1";
      button.hidden = false;
      button.addEventListener("click", function () {
        var target = document.getElementById(button.dataset.copyTarget);
        if (!target) return;
        var text = target.textContent.trim();
        var done = function () { button.textContent = "Copied"; };
        if (navigator.clipboard && window.isSecureContext) {
          navigator.clipboard.writeText(text).then(done, function () { selectText(target); });
        } else {
          selectText(target);
        }
      });
    });
  }

  function selectText(element) {
    var range = document.createRange();
    range.selectNodeContents(element);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }

  function announce(message) {
    var region = document.getElementById("live-errors");
    if (!region) return;
    region.textContent = message;
    region.hidden = false;
  }

  document.addEventListener("DOMContentLoaded", function () {
    drawSpendChart();
    wireCopyButtons(document);
  });

  document.addEventListener("htmx:afterSwap", function (event) {
    var region = document.getElementById("live-errors");
    if (region) { region.hidden = true; region.textContent = ""; }
    wireCopyButtons(event.target);
  });

  // A 429 that carries a part of the page (a key card saying how long to wait) is swapped in
  // like any answer: its words are better than a generic "try later".
  document.addEventListener("htmx:beforeSwap", function (event) {
    var xhr = event.detail.xhr;
    if (xhr && xhr.status === 429 && xhr.responseText) {
      event.detail.shouldSwap = true;
      event.detail.isError = false;
    }
  });

  // htmx swaps only successful answers; anything else gets a message instead of silence.
  document.addEventListener("htmx:responseError", function (event) {
    var status = event.detail.xhr ? event.detail.xhr.status : 0;
    if (status === 403) {
      announce("This page is out of date (or you were signed out). Reload the page and try again.");
    } else if (status === 429) {
      announce("Too many requests. Try again later.");
    } else {
      announce("Something went wrong on our side. Nothing was charged; please try again.");
    }
  });
  document.addEventListener("htmx:sendError", function () {
    announce("Couldn't reach Niyra. Check your connection and try again.");
  });
})();
