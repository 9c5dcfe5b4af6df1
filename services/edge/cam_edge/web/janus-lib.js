// The one place that loads the vendored Janus client. adapter.js (webrtc-adapter) goes
// first: it sets window.adapter, which janus.js reads. Loaded on the first meeting only.
import './vendor/adapter.js';

export { default as Janus } from './vendor/janus.es.js';
