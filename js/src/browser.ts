/** Entry of the browser bundle (`snorky.min.js`): defines the global `Snorky`. */

import { Snorky } from "./client.js";

(globalThis as unknown as { Snorky: typeof Snorky }).Snorky = Snorky;
