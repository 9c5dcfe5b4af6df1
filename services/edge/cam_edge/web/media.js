// The media of one conference on one Janus server (VideoRoom plugin), through janus.js:
// one publisher handle for this page's camera and microphone, one subscriber handle
// per other participant's feed. A MediaSession lives as long as the conference stays
// on that server; a move (conf_moved) or a lost server starts a new one.

let janusLoaded = null;

// Janus.init once per page, after the library is loaded.
function loadJanus() {
  if (!janusLoaded) {
    janusLoaded = import('./janus-lib.js').then(({ Janus }) => new Promise((resolve) => {
      Janus.init({
        debug: false,
        dependencies: Janus.useDefaultDependencies({ adapter: window.adapter }),
        callback: () => resolve(Janus),
      });
    }));
    janusLoaded.catch(() => { janusLoaded = null; });
  }
  return janusLoaded;
}

const PLUGIN = 'janus.plugin.videoroom';

export class MediaSession {
  // conference: {url, janus_room, pin}; display: the string other pages match feeds by.
  // handlers: onLocal(stream), onRemote(feedId, display, stream | null),
  //           onLive(), onLost(reason), onError(code)
  constructor({ conference, iceServers, display, audio, video, handlers }) {
    this.conference = conference;
    this.iceServers = iceServers || [];
    this.display = display;
    this.audio = audio;
    this.video = video;
    this.h = handlers;
    this.janus = null;
    this.pub = null;
    this.privateId = null;
    this.feeds = new Map();     // feed id -> {handle, display, stream}
    this.localStream = new MediaStream();
    this.stopped = false;
  }

  async start() {
    const Janus = await loadJanus();
    if (this.stopped) return;
    this.janus = new Janus({
      server: this.conference.url,
      iceServers: this.iceServers,
      success: () => this.attachPublisher(),
      error: (err) => this.lost(String(err)),
      destroyed: () => {},
    });
  }

  lost(reason) {
    if (this.stopped) return;
    this.stop();
    this.h.onLost(reason);
  }

  attachPublisher() {
    const { janus_room: room, pin } = this.conference;
    this.janus.attach({
      plugin: PLUGIN,
      success: (handle) => {
        if (this.stopped) return;
        this.pub = handle;
        handle.send({ message: { request: 'join', room, pin, ptype: 'publisher', display: this.display } });
      },
      error: (err) => this.lost(String(err)),
      onmessage: (msg, jsep) => this.onPublisherMessage(msg, jsep),
      onlocaltrack: (track, on) => {
        if (on) this.localStream.addTrack(track);
        else this.localStream.removeTrack(track);
        this.h.onLocal(this.localStream);
      },
      onremotetrack: () => {},
      webrtcState: (up) => { if (up) this.h.onLive(); },
      oncleanup: () => {},
    });
  }

  onPublisherMessage(msg, jsep) {
    if (this.stopped) return;
    const kind = msg.videoroom;
    if (msg.error) {
      this.h.onError(msg.error_code === 433 ? 'forbidden' : 'video_error');
      return;
    }
    if (kind === 'joined') {
      this.privateId = msg.private_id;
      this.publish(this.audio, this.video);
      for (const p of msg.publishers || []) this.subscribe(p);
    } else if (kind === 'event') {
      for (const p of msg.publishers || []) this.subscribe(p);
      const gone = msg.unpublished ?? msg.leaving;
      if (gone != null && gone !== 'ok') this.unsubscribe(gone);
    } else if (kind === 'destroyed') {
      this.lost('room destroyed');
    }
    if (jsep) this.pub.handleRemoteJsep({ jsep });
  }

  // Send the camera and microphone; without a camera, the microphone only; without
  // either, nothing (this page still sees and hears the others).
  publish(audio, video, fallback = true) {
    const tracks = [
      { type: 'audio', capture: true, recv: false },
      { type: 'video', capture: true, recv: false },
    ];
    this.pub.createOffer({
      tracks,
      success: (jsep) => {
        this.pub.send({ message: { request: 'configure', audio: true, video: true }, jsep });
        if (!audio) this.pub.muteAudio();
        if (!video) this.pub.muteVideo();
      },
      error: (err) => {
        console.warn('publishing failed:', err);
        if (fallback) this.publishAudioOnly();
        else this.h.onError('media_unavailable');
      },
    });
  }

  publishAudioOnly() {
    this.pub.createOffer({
      tracks: [{ type: 'audio', capture: true, recv: false }],
      success: (jsep) => {
        this.pub.send({ message: { request: 'configure', audio: true, video: false }, jsep });
        if (!this.audio) this.pub.muteAudio();
      },
      error: () => this.h.onError('media_unavailable'),
    });
  }

  subscribe(publisher) {
    const feed = publisher.id;
    if (this.feeds.has(feed) || this.stopped) return;
    const entry = { handle: null, display: String(publisher.display ?? ''), stream: new MediaStream() };
    this.feeds.set(feed, entry);
    const { janus_room: room, pin } = this.conference;
    this.janus.attach({
      plugin: PLUGIN,
      success: (handle) => {
        if (this.stopped || this.feeds.get(feed) !== entry) { handle.detach(); return; }
        entry.handle = handle;
        handle.send({ message: { request: 'join', room, pin, ptype: 'subscriber',
          streams: [{ feed }], private_id: this.privateId } });
      },
      error: (err) => console.warn('subscribing failed:', err),
      onmessage: (msg, jsep) => {
        if (msg.error) { console.warn('subscriber:', msg.error); return; }
        if (!jsep || !entry.handle) return;
        entry.handle.createAnswer({
          jsep,
          tracks: [],
          success: (answer) => entry.handle.send({ message: { request: 'start', room }, jsep: answer }),
          error: (err) => console.warn('answer failed:', err),
        });
      },
      onremotetrack: (track, mid, on) => {
        if (this.stopped || this.feeds.get(feed) !== entry) return;   // unsubscribed already
        const stream = new MediaStream(entry.stream.getTracks().filter((t) => t.id !== track.id));
        if (on) stream.addTrack(track);
        entry.stream = stream;
        this.h.onRemote(feed, entry.display, stream);
      },
      oncleanup: () => {},
    });
  }

  unsubscribe(feed) {
    const entry = this.feeds.get(feed);
    if (!entry) return;
    this.feeds.delete(feed);
    if (entry.handle) { try { entry.handle.detach(); } catch { /* ignore */ } }
    this.h.onRemote(feed, entry.display, null);
  }

  setAudio(on) {
    this.audio = on;
    if (!this.pub) return;
    if (on) this.pub.unmuteAudio(); else this.pub.muteAudio();
  }

  setVideo(on) {
    this.video = on;
    if (!this.pub) return;
    if (on) this.pub.unmuteVideo(); else this.pub.muteVideo();
  }

  // Inbound video frames decoded per feed, from each subscriber's RTCPeerConnection.
  async stats() {
    const out = new Map();
    for (const [feed, entry] of this.feeds) {
      const pc = entry.handle && entry.handle.webrtcStuff && entry.handle.webrtcStuff.pc;
      if (!pc) continue;
      let frames = 0;
      try {
        const report = await pc.getStats();
        report.forEach((s) => {
          if (s.type === 'inbound-rtp' && s.kind === 'video') frames += s.framesDecoded || 0;
        });
      } catch { continue; }
      out.set(feed, frames);
    }
    return out;
  }

  stop() {
    if (this.stopped) return;
    this.stopped = true;
    for (const track of this.localStream.getTracks()) track.stop();
    if (this.janus) {
      // unload: the request goes as a beacon and janus.js stops polling at once, so no
      // poll of the destroyed session is left to fail.
      try { this.janus.destroy({ cleanupHandles: true, notifyDestroyed: false, unload: true }); }
      catch { /* the server may be gone */ }
    }
    this.feeds.clear();
  }
}
