// The one place that imports the vendored Preact + hooks + htm bundle.
export {
  h, html, render, useState, useEffect, useLayoutEffect, useRef, useMemo, useCallback,
} from './vendor/htm-preact-standalone.module.js';
