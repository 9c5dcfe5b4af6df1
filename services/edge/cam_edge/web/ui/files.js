// File attachments: a file message (thumbnail of an image, download button), the
// preview overlay, the uploads of the composer, and what a drop or a paste carries.
// File names are what users typed: text children and attribute values only.

import { html, useEffect, useRef, useState } from '../lib.js';
import { errorText, knownError, t } from '../i18n.js';
import { sizeText } from '../format.js';
import * as store from '../store.js';

const THUMB_MAX = 320;     // the server's thumbnails fit in 320 × 320
const PREVIEW_MAX = 1280;  // and its previews in 1280 × 1280
const REVOKE_DOWNLOAD = 60000;   // ms an object URL of a download lives (the download reads it)

// An image's size once scaled down to fit in max × max (never up), for the width and
// height attributes, so the layout does not jump when the picture comes.
export function fitSize(file, max) {
  const w = Number(file.width) || 0;
  const h = Number(file.height) || 0;
  if (w <= 0 || h <= 0) return { width: max, height: max };
  const scale = Math.min(1, max / w, max / h);
  return { width: Math.max(1, Math.round(w * scale)), height: Math.max(1, Math.round(h * scale)) };
}

export function isImage(file) {
  return !!file && file.width != null && Number(file.width) > 0;
}

function fileName(file) { return String((file && file.name) ?? ''); }

// An object URL of a file's variant ('thumb', 'preview'), fetched with the session's
// token; revoked (and the fetch aborted) when the component goes away.
function useFileUrl(id, variant, enabled) {
  const [got, setGot] = useState({ id: null, url: null, error: null });
  useEffect(() => {
    if (!enabled || !id) return undefined;
    let url = null;
    let live = true;
    const abort = new AbortController();
    store.fileBlob(id, variant, abort.signal).then((blob) => {
      if (!live) return;
      url = URL.createObjectURL(blob);
      setGot({ id, url, error: null });
    }, (e) => { if (live) setGot({ id, url: null, error: e.code || 'internal' }); });
    return () => {
      live = false;
      abort.abort();
      if (url) URL.revokeObjectURL(url);
    };
  }, [id, variant, enabled]);
  return got.id === id ? got : { id, url: null, error: null };
}

// Save a file's original: fetched with the token (an <a href> to the API could not carry
// it), handed to the browser as an object URL with <a download=name>.
export async function downloadFile(file) {
  const blob = await store.fileBlob(file.id, '');
  const url = URL.createObjectURL(blob);
  const a = document.createElement('a');
  a.href = url;
  a.download = fileName(file) || 'file';
  a.rel = 'noopener';
  a.hidden = true;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), REVOKE_DOWNLOAD);
}

function useDownload(file) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const run = async () => {
    if (busy) return;
    setBusy(true);
    setError(null);
    try { await downloadFile(file); } catch (e) { setError(e.code || 'internal'); }
    finally { setBusy(false); }
  };
  return { busy, error, run };
}

export function FileAttachment({ file, onPreview }) {
  const name = fileName(file);
  const image = isImage(file);
  const thumbSize = fitSize(file, THUMB_MAX);
  const thumb = useFileUrl(file.id, 'thumb', image);
  const dl = useDownload(file);
  const size = sizeText(file.size);
  let picture = null;
  if (image && thumb.url) {
    picture = html`
      <button type="button" class="file-thumb-button" data-testid="file-open"
        aria-label=${t('file.open', { name })} title=${name} onClick=${() => onPreview && onPreview(file)}>
        <img class="file-thumb" data-testid="file-thumb" src=${thumb.url} alt=${name}
          width=${thumbSize.width} height=${thumbSize.height} />
      </button>`;
  } else if (image && !thumb.error) {
    // The thumbnail's place, kept while it loads.
    picture = html`<canvas class="file-thumb file-thumb-wait" data-testid="file-thumb-loading"
      width=${thumbSize.width} height=${thumbSize.height} aria-hidden="true"></canvas>`;
  }
  return html`
    <div class="file" data-testid="file-attachment" data-file-id=${file.id}
      data-image=${image ? 'true' : undefined}>
      ${picture}
      <button type="button" class="file-download" data-testid="file-download" disabled=${dl.busy}
        aria-label=${t('file.download_name', { name, size })} onClick=${dl.run}>
        <span class="file-icon" aria-hidden="true"></span>
        <span class="file-name" data-testid="file-name">${name}</span>
        <span class="file-size" data-testid="file-size">${dl.busy ? t('file.downloading') : size}</span>
      </button>
      ${dl.error && html`<span class="file-error error" data-testid="file-error" role="alert">
        ${errorText(dl.error)}</span>`}
    </div>`;
}

// The preview of an image over the page, with a download button; Escape, the close
// button or a click beside the picture closes it.
export function FilePreview({ file, onClose }) {
  const name = fileName(file);
  const shown = useFileUrl(file.id, 'preview', true);
  const size = fitSize(file, PREVIEW_MAX);
  const dl = useDownload(file);
  const close = useRef(null);
  useEffect(() => {
    const onKey = (ev) => { if (ev.key === 'Escape') onClose(); };
    document.addEventListener('keydown', onKey);
    const before = document.activeElement;
    if (close.current) close.current.focus();
    return () => {
      document.removeEventListener('keydown', onKey);
      if (before && before.isConnected && before.focus) before.focus();
    };
  }, [file.id]);
  return html`
    <div class="overlay" data-testid="file-preview" data-file-id=${file.id} role="dialog" aria-modal="true"
      aria-label=${t('file.preview', { name })} onClick=${(ev) => { if (ev.target === ev.currentTarget) onClose(); }}>
      <div class="overlay-card">
        <div class="overlay-bar">
          <span class="file-name" data-testid="file-preview-name" title=${name}>${name}</span>
          <span class="muted">${sizeText(file.size)}</span>
          <span class="grow"></span>
          ${dl.error && html`<span class="error" role="alert">${errorText(dl.error)}</span>`}
          <button type="button" class="primary" data-testid="file-preview-download" disabled=${dl.busy}
            onClick=${dl.run}>${dl.busy ? t('file.downloading') : t('file.download')}</button>
          <button type="button" ref=${close} data-testid="file-preview-close" onClick=${onClose}>
            ${t('file.close')}</button>
        </div>
        <div class="overlay-body">
          ${shown.url
            ? html`<img class="preview-image" data-testid="file-preview-image" src=${shown.url} alt=${name}
                width=${size.width} height=${size.height} />`
            : shown.error
              ? html`<p class="error" role="alert">${errorText(shown.error)}</p>`
              : html`<p class="muted" role="status">${t('file.loading')}</p>`}
        </div>
      </div>
    </div>`;
}

function uploadErrorText(u) {
  if (knownError(u.error)) return errorText(u.error);
  return u.message || errorText(u.error);
}

function UploadItem({ u }) {
  const pct = u.total > 0 ? Math.min(100, Math.floor((u.loaded * 100) / u.total)) : 0;
  const failed = u.state === 'failed';
  const queued = u.state === 'queued';
  return html`
    <li class=${`upload-item${failed ? ' upload-failed' : ''}`} data-testid="upload-item"
      data-state=${u.state} data-name=${u.name} data-percent=${queued ? 0 : pct}
      data-error=${failed ? u.error : undefined}>
      <span class="upload-name" data-testid="upload-name" title=${u.name}>${u.name}</span>
      <span class="upload-size muted">${sizeText(u.size)}</span>
      ${failed
        ? html`<span class="upload-error" data-testid="upload-error" role="alert"
            title=${u.message || ''}>${t('upload.failed')}: ${uploadErrorText(u)}</span>`
        : html`
          <progress class="upload-progress" data-testid="upload-progress" max="100" value=${queued ? 0 : pct}
            aria-label=${t('upload.progress', { name: u.name })}></progress>
          <span class="upload-percent" data-testid="upload-percent">
            ${queued ? t('upload.queued') : t('upload.percent', { n: pct })}</span>`}
      ${failed && html`<button type="button" data-testid="upload-retry"
        onClick=${() => store.retryUpload(u.key)}>${t('upload.retry')}</button>`}
      <button type="button" data-testid="upload-cancel" aria-label=${failed ? t('upload.dismiss')
        : t('upload.cancel_name', { name: u.name })} onClick=${() => store.cancelUpload(u.key)}>
        ${failed ? t('upload.dismiss') : t('upload.cancel')}</button>
    </li>`;
}

export function UploadList({ room }) {
  const list = store.uploadList(room.id);
  if (!list.length) return null;
  return html`
    <ul class="upload-list" data-testid="upload-list" aria-label=${t('upload.label')}>
      ${list.map((u) => html`<${UploadItem} key=${u.key} u=${u} />`)}
    </ul>`;
}

// The files a paste or a drop carries (the files list, else the items of kind 'file').
export function transferFiles(dt) {
  if (!dt) return [];
  const files = [...(dt.files || [])];
  if (files.length) return files;
  const out = [];
  for (const item of [...(dt.items || [])]) {
    if (item.kind === 'file') {
      const file = item.getAsFile();
      if (file) out.push(file);
    }
  }
  return out;
}

export function carriesFiles(dt) {
  return !!dt && [...(dt.types || [])].includes('Files');
}

// Files dropped anywhere else on the page do nothing (the browser would open them).
let guarded = false;
export function guardPageDrops() {
  if (guarded) return;
  guarded = true;
  const stop = (ev) => { if (carriesFiles(ev.dataTransfer)) ev.preventDefault(); };
  window.addEventListener('dragover', stop);
  window.addEventListener('drop', stop);
}
