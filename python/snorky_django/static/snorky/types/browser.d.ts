/** Entry of the browser bundle (`snorky.min.js`): defines the global `Snorky`. */
export {};
