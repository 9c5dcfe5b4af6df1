// Entry point: render the app and, with a token from this tab's session, connect.

import { html, render } from './lib.js';
import { App } from './ui/app.js';
import * as store from './store.js';

render(html`<${App} />`, document.getElementById('app'));
store.start();
