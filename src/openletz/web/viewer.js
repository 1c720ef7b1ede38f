// The viewer: one image as it forms (status, progress, preview) and once done
// (the image and a link to each version). It polls GET /images/{id} until the
// image is finished, honouring Retry-After when the server asks to slow down.

import { ApiError, TERMINAL, api } from "./api.js";

const POLL_MS = 700;
const VERSION_ORDER = ["original", "1920x1920", "640x640", "240x240", "96x96"];
const STATUS_TEXT = {
  new: "Waiting for a worker…",
  "in progress": "Generating…",
  ready: "Ready",
  failed: "Failed",
  interrupted: "Stopped",
};

const $ = (id) => document.getElementById(id);
const sleep = (ms, signal) =>
  new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });

export class Viewer {
  constructor({ onFinished, onUnauthorized }) {
    this.onFinished = onFinished;
    this.onUnauthorized = onUnauthorized;
    this.current = null; // the image object shown
    this.controller = null; // aborts the poll of the previous image
    $("interrupt").addEventListener("click", () => this.interrupt());
  }

  clear() {
    this.controller?.abort();
    this.current = null;
    $("viewer-body").hidden = true;
    $("viewer-empty").hidden = false;
  }

  // Show `image` and follow it until it is finished.
  show(image, { own = true } = {}) {
    this.controller?.abort();
    this.controller = new AbortController();
    this.own = own;
    $("preview").removeAttribute("src");
    $("preview").hidden = true;
    $("final-link").hidden = true;
    $("final").removeAttribute("src");
    $("final").removeAttribute("srcset");
    this.render(image);
    if (!TERMINAL.has(image.status)) this.follow(image.id, this.controller.signal);
    $("viewer").scrollIntoView({ block: "nearest", behavior: "smooth" });
  }

  async follow(id, signal) {
    let wait = POLL_MS;
    while (!signal.aborted) {
      await sleep(wait, signal);
      if (signal.aborted) return;
      wait = POLL_MS;
      try {
        const image = await api.get(id, signal);
        if (signal.aborted) return;
        this.render(image);
        if (TERMINAL.has(image.status)) {
          this.onFinished(image);
          return;
        }
      } catch (err) {
        if (err.name === "AbortError") return;
        if (err instanceof ApiError && err.status === 401) return this.onUnauthorized(err);
        if (err instanceof ApiError && err.status === 404) {
          $("viewer-message").textContent = err.message;
          return;
        }
        // Rate limited, or the server is restarting: wait and try again.
        wait = err.retryAfter != null ? err.retryAfter * 1000 : 3000;
        $("viewer-status").textContent = `${err.message} (trying again)`;
      }
    }
  }

  render(image) {
    this.current = image;
    $("viewer-empty").hidden = true;
    $("viewer-body").hidden = false;
    $("viewer-prompt").textContent = image.prompt;
    const progress = Math.max(0, Math.min(100, image.progress | 0));
    const status = STATUS_TEXT[image.status] || image.status;
    $("viewer-status").textContent =
      image.status === "in progress" ? `${status} ${progress}%` : status;
    const bar = $("progress");
    bar.setAttribute("aria-valuenow", String(progress));
    bar.setAttribute("aria-valuetext", `${progress}% (${image.status})`);
    bar.dataset.status = image.status;
    bar.querySelector(".bar").style.width = `${progress}%`;
    $("stage").style.aspectRatio = `${image.width} / ${image.height}`;
    $("interrupt").hidden = !this.own || TERMINAL.has(image.status);
    $("viewer-message").textContent =
      image.status === "failed" || image.status === "interrupted"
        ? image.progressMessage || ""
        : "";

    const versions = image.imageVersions || {};
    const shown = versions["640x640"] || versions.original;
    if (image.status === "ready" && shown) {
      this.showFinal(image, versions, shown);
    } else if (image.previewImage) {
      const preview = $("preview");
      preview.src = `data:image/jpeg;base64,${image.previewImage}`;
      preview.hidden = false;
    }
    this.renderVersions(image, versions);
    const made = new Date(image.createdAt).toLocaleString();
    const facts = [
      `${image.width} × ${image.height}`,
      `quality ${image.quality}`,
      `creativity ${image.creativity}`,
      `mode ${image.mode}`,
      `version ${image.systemVersion}`,
      `seed ${image.seed}`,
      image.privacy,
      image.sandbox ? "sandbox engine" : `engine ${image.engine}`,
      made,
    ];
    $("viewer-meta").textContent = facts.join(" · ");
  }

  showFinal(image, versions, shown) {
    const final = $("final");
    if (final.getAttribute("src") !== shown) {
      final.src = shown;
      const large = versions["1920x1920"];
      if (large && shown !== large) final.srcset = `${shown} 1x, ${large} 2x`;
    }
    final.alt = image.prompt;
    const link = $("final-link");
    link.href = versions.original || shown;
    link.hidden = false;
    final.addEventListener("load", () => ($("preview").hidden = true), { once: true });
    if (final.complete && final.naturalWidth) $("preview").hidden = true;
  }

  renderVersions(image, versions) {
    const list = $("versions");
    list.replaceChildren();
    const names = Object.keys(versions).sort(
      (a, b) => rank(a) - rank(b) || a.localeCompare(b),
    );
    for (const name of names) {
      const item = document.createElement("li");
      const link = document.createElement("a");
      link.href = versions[name];
      link.target = "_blank";
      link.rel = "noopener";
      link.textContent = name === "original" ? `original (${image.width} × ${image.height})` : name;
      item.append(link);
      list.append(item);
    }
    $("versions-box").hidden = names.length === 0;
  }

  async interrupt() {
    if (!this.current) return;
    $("interrupt").disabled = true;
    try {
      await api.interrupt(this.current.id);
    } catch (err) {
      $("viewer-message").textContent = err.message;
    } finally {
      $("interrupt").disabled = false;
    }
  }
}

function rank(name) {
  const i = VERSION_ORDER.indexOf(name);
  return i === -1 ? VERSION_ORDER.length : i;
}
