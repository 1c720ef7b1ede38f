// A paged gallery of image objects: the caller's own (with a privacy switch and
// delete), or other accounts' public images (to look at).

import { ApiError, TERMINAL } from "./api.js";

const LIMIT = 12;
const REFRESH_MS = 3000; // while an image of the page is still forming
const CONFIRM_MS = 5000;

export class Gallery {
  // `name` prefixes the element ids; `load(page, limit)` returns image objects.
  constructor(name, { load, own, actions, onOpen, onUnauthorized }) {
    this.load = load;
    this.own = own;
    this.actions = actions; // {setPrivacy(id, privacy), remove(id)} for one's own
    this.onOpen = onOpen;
    this.onUnauthorized = onUnauthorized;
    this.page = 1;
    this.timer = null;
    this.el = (suffix) => document.getElementById(suffix ? `${name}-${suffix}` : name);
    this.el("prev").addEventListener("click", () => this.go(this.page - 1));
    this.el("next").addEventListener("click", () => this.go(this.page + 1));
    this.el("refresh").addEventListener("click", () => this.refresh());
  }

  go(page) {
    this.page = Math.max(1, page);
    return this.refresh();
  }

  stop() {
    clearTimeout(this.timer);
    this.timer = null;
  }

  async refresh() {
    this.stop();
    let images;
    try {
      images = await this.load(this.page, LIMIT);
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) return this.onUnauthorized(err);
      this.el("error").textContent = err.message;
      return;
    }
    if (images.length === 0 && this.page > 1) return this.go(this.page - 1);
    this.el("error").textContent = "";
    this.render(images);
    if (images.some((image) => !TERMINAL.has(image.status))) {
      this.timer = setTimeout(() => this.refresh(), REFRESH_MS);
    }
  }

  render(images) {
    const list = this.el();
    list.replaceChildren(...images.map((image) => this.card(image)));
    this.el("empty").hidden = images.length > 0 || this.page > 1;
    this.el("page").textContent = `Page ${this.page}`;
    this.el("prev").disabled = this.page <= 1;
    this.el("next").disabled = images.length < LIMIT;
    this.el("pager").hidden = this.el("prev").disabled && this.el("next").disabled;
  }

  card(image) {
    const item = document.createElement("li");
    item.className = "card";
    item.dataset.id = image.id;
    item.dataset.status = image.status;

    const open = document.createElement("button");
    open.type = "button";
    open.className = "thumb";
    open.setAttribute("aria-label", `Open: ${image.prompt}`);
    open.append(thumbnail(image));
    open.addEventListener("click", () => this.onOpen(image, { own: this.own }));

    const prompt = document.createElement("p");
    prompt.className = "prompt";
    prompt.textContent = image.prompt;
    prompt.title = image.prompt;

    const meta = document.createElement("p");
    meta.className = "meta";
    const when = new Date(image.createdAt).toLocaleString();
    const state = image.status === "in progress" ? `${image.progress}%` : image.status;
    meta.textContent = `${image.width} × ${image.height} · ${state} · ${when}`;

    item.append(open, prompt, meta);
    if (this.own) item.append(this.controls(image, item));
    return item;
  }

  controls(image, item) {
    const box = document.createElement("div");
    box.className = "actions";

    const label = document.createElement("label");
    label.className = "switch";
    const toggle = document.createElement("input");
    toggle.type = "checkbox";
    toggle.checked = image.privacy === "public";
    label.append(toggle, " Public");
    toggle.addEventListener("change", async () => {
      toggle.disabled = true;
      const privacy = toggle.checked ? "public" : "private";
      try {
        const updated = await this.actions.setPrivacy(image.id, privacy);
        const card = this.card(updated);
        item.replaceWith(card);
        card.querySelector("input[type=checkbox]").focus();
      } catch (err) {
        toggle.checked = !toggle.checked;
        toggle.disabled = false;
        this.el("error").textContent = err.message;
      }
    });

    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "quiet danger";
    const say = (text, name) => {
      remove.textContent = text;
      remove.setAttribute("aria-label", `${name}: ${image.prompt}`);
    };
    say("Delete", "Delete");
    let armed = null;
    remove.addEventListener("click", async () => {
      if (!armed) {
        // A second click within a few seconds deletes: no dialog to dismiss.
        say("Delete for good?", "Delete for good? Press again to delete");
        armed = setTimeout(() => {
          armed = null;
          say("Delete", "Delete");
        }, CONFIRM_MS);
        return;
      }
      clearTimeout(armed);
      remove.disabled = true;
      try {
        await this.actions.remove(image.id);
        await this.refresh();
      } catch (err) {
        remove.disabled = false;
        this.el("error").textContent = err.message;
      }
    });

    box.append(label, remove);
    return box;
  }
}

function thumbnail(image) {
  const versions = image.imageVersions || {};
  // A tile is a square about 200 px wide that the image covers: the 240 px version
  // is sharp enough only for a near-square image.
  const squarish = Math.max(image.width, image.height) <= 1.2 * Math.min(image.width, image.height);
  const medium = versions["640x640"] || versions.original;
  const small = (squarish && versions["240x240"]) || medium;
  if (image.status === "ready" && small) {
    const img = document.createElement("img");
    img.src = small;
    if (medium && small !== medium) img.srcset = `${small} 1x, ${medium} 2x`;
    img.alt = "";
    img.loading = "lazy";
    return img;
  }
  if (image.previewImage) {
    const img = document.createElement("img");
    img.src = `data:image/jpeg;base64,${image.previewImage}`;
    img.alt = "";
    return img;
  }
  const none = document.createElement("span");
  none.className = "placeholder";
  none.textContent = image.status === "failed" ? "failed" : image.status;
  return none;
}
