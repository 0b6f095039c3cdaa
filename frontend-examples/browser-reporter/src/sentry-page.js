// The page's use of @sentry/browser, bundled by esbuild into dist/sentry-page.js so the page
// loads nothing from a CDN. The DSN is errorgraph's, passed in the page's query string
// (?dsn=…) so one build works against any server.
import * as Sentry from "@sentry/browser";

const params = new URLSearchParams(window.location.search);
const dsn = params.get("dsn");

Sentry.init({
  dsn,
  release: params.get("release") || "browser-example@1.0.0",
  environment: "example",
  // Keep every event: this page exists to send them.
  sampleRate: 1.0,
});
Sentry.setUser({ id: "browser-user-1", email: "[email protected]" });
Sentry.setTag("page", "sentry");

function parseTotal(cart) {
  return cart.items.reduce((sum, item) => sum + item.price, 0);
}

function checkout() {
  // cart is undefined: a TypeError with a real Chrome stack.
  return parseTotal(window.cart);
}

document.getElementById("throw").addEventListener("click", () => {
  checkout();
});

document.getElementById("reject").addEventListener("click", () => {
  Promise.reject(new Error("payment service unavailable"));
});

window.__errorgraphReady = true;
