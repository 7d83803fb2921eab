/**
 * @file switchboard.mjs — the ES module entry of the Switchboard client:
 *
 *   import Switchboard from "https://signaling.example.com/switchboard.mjs";
 *   // or: import { Switchboard } from ".../switchboard.mjs";
 *
 * It runs `switchboard.js` (next to it) for its side effect, which defines
 * `globalThis.Switchboard`, and exports that class: one implementation for
 * classic scripts and modules alike. Types: `switchboard.d.mts`.
 */
import "./switchboard.js";

const Switchboard = globalThis.Switchboard;
if (typeof Switchboard !== "function") {
  throw new Error("switchboard.mjs: ./switchboard.js did not define Switchboard");
}

export { Switchboard };
export default Switchboard;
