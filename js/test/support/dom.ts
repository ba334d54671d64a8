/**
 * A DOM for rendering React in Node: jsdom's window, installed as the globals
 * react-dom looks for. Import it before react-dom (imports run in order).
 */

import { JSDOM } from "jsdom";

const dom = new JSDOM("<!doctype html><html><body></body></html>", { url: "http://127.0.0.1/" });

Object.assign(globalThis, {
  window: dom.window,
  document: dom.window.document,
  // The tests wait for the real network, not for act(): React schedules updates as in a browser.
  IS_REACT_ACT_ENVIRONMENT: false,
});
// Node 21 and later have a navigator of their own; Node 20 has none, and react-dom reads it.
if (!("navigator" in globalThis)) Object.assign(globalThis, { navigator: dom.window.navigator });

/** A fresh element in the document to render into. */
export function container(): HTMLElement {
  const element = dom.window.document.createElement("div");
  dom.window.document.body.append(element);
  return element;
}
