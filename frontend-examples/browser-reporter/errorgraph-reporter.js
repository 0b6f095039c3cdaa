// errorgraph browser reporter: a plain snippet, no dependencies, no build.
//
// Reports uncaught errors and unhandled promise rejections to errorgraph's Proliferate
// endpoint (POST /api/v1/errors) with the breadcrumbs that led there (clicks and
// navigation), or, where fetch is not wanted, as an ErrorStack <img> beacon (GET /submit).
//
//   <script src="errorgraph-reporter.js"></script>
//   <script>
//     errorgraphReporter.init({ url: "https://errors.example.com", key: "pk_…",
//                               release: "1.4.2", environment: "production" });
//   </script>
(function (global) {
  "use strict";

  var MAX_BREADCRUMBS = 30;
  var config = null;
  var breadcrumbs = [];

  function crumb(category, message, data) {
    breadcrumbs.push({ timestamp: Date.now(), category: category, message: message, level: "info", data: data || {} });
    if (breadcrumbs.length > MAX_BREADCRUMBS) breadcrumbs.shift();
  }

  function describe(element) {
    if (!element || !element.tagName) return "";
    var text = element.tagName.toLowerCase();
    if (element.id) text += "#" + element.id;
    if (element.className && typeof element.className === "string") {
      text += "." + element.className.trim().split(/\s+/).join(".");
    }
    return text;
  }

  function eventId() {
    if (global.crypto && global.crypto.randomUUID) return global.crypto.randomUUID().replace(/-/g, "");
    return Date.now().toString(16) + Math.random().toString(16).slice(2);
  }

  function sendProliferate(error, fallbackMessage) {
    var body = {
      api_key: config.key,
      event_id: eventId(),
      timestamp: new Date().toISOString(),
      type: "exception",
      level: "error",
      environment: config.environment,
      release: config.release,
      url: global.location.href,
      user_agent: global.navigator.userAgent,
      exception: {
        type: (error && error.name) || "Error",
        message: (error && error.message) || fallbackMessage || String(error),
        stack: (error && error.stack) || ""
      },
      user: config.user,
      breadcrumbs: breadcrumbs.slice(),
      extra: { source: "errorgraph-reporter" }
    };
    return global.fetch(config.url + "/api/v1/errors", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      keepalive: true
    });
  }

  function sendBeacon(error, message, source, line) {
    var params = new URLSearchParams({
      _s: config.key,
      _r: "img",
      Msg: (error && error.name ? error.name + ": " : "") + ((error && error.message) || message || ""),
      URL: source || global.location.href,
      Line: String(line || ""),
      Platform: global.navigator.platform,
      UserAgent: global.navigator.userAgent,
      Stack: (error && error.stack) || ""
    });
    var image = new Image();
    image.src = config.url + "/submit?" + params.toString();
    return image;
  }

  function report(error, message, source, line) {
    if (!config) return;
    try {
      if (config.transport === "beacon") sendBeacon(error, message, source, line);
      else sendProliferate(error, message);
    } catch (ignored) {
      // Reporting must never break the page.
    }
  }

  function init(options) {
    config = {
      url: String(options.url).replace(/\/$/, ""),
      key: options.key,
      release: options.release,
      environment: options.environment,
      user: options.user,
      transport: options.transport || "fetch"
    };
    global.addEventListener("error", function (event) {
      report(event.error, event.message, event.filename, event.lineno);
    });
    global.addEventListener("unhandledrejection", function (event) {
      var reason = event.reason;
      report(reason instanceof Error ? reason : null, "Unhandled rejection: " + String(reason));
    });
    global.document.addEventListener("click", function (event) {
      crumb("click", "Clicked " + describe(event.target), { element: describe(event.target) });
    }, true);
    var push = global.history.pushState;
    global.history.pushState = function () {
      var result = push.apply(this, arguments);
      crumb("navigation", "Navigated to " + global.location.pathname + global.location.search + global.location.hash);
      return result;
    };
    global.addEventListener("popstate", function () {
      crumb("navigation", "Navigated to " + global.location.pathname + global.location.search + global.location.hash);
    });
    global.addEventListener("hashchange", function () {
      crumb("navigation", "Navigated to " + global.location.hash);
    });
    crumb("navigation", "Opened " + global.location.pathname);
  }

  global.errorgraphReporter = { init: init, report: report, breadcrumb: crumb };
})(window);
