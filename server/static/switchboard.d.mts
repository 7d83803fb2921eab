// Types of `switchboard.mjs`: the same as `switchboard.d.ts` (keep both files side by side),
// which declares the class. The default export is named here because, under Node16
// resolution, `switchboard.d.ts` counts as CommonJS and its own default would not carry over.
export * from "./switchboard.js";
export { Switchboard as default } from "./switchboard.js";
