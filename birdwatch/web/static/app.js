// birdwatch's page: live pictures, corrections (one or many, with undo), and the review keys.
// No framework, no CDN: this file is all of it.
"use strict";

const csrf = () => document.querySelector('meta[name="csrf"]').content;

async function post(url, body) {
  const response = await fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
    body: JSON.stringify(body),
    credentials: "same-origin",
  });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(answer.error || response.statusText);
  return answer;
}

function toast(text, undoIds) {
  const box = document.getElementById("toast");
  box.replaceChildren(document.createTextNode(text));
  if (undoIds && undoIds.length) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = "Undo";
    button.addEventListener("click", () => undo(undoIds));
    box.append(button);
  }
  box.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { box.hidden = true; }, 8000);
}

let lastCorrections = [];

async function correct(visits, species, options = {}) {
  const body = species === null ? { visits, not_a_bird: true } : { visits, species };
  try {
    const answer = await post("/api/correct", body);
    lastCorrections = answer.corrections;
    sessionStorage.setItem("birdwatch-undo", JSON.stringify(answer.corrections));
    const what = species === null ? "not a bird" : species;
    sessionStorage.setItem("birdwatch-toast", `${visits.length} visit${visits.length === 1 ? "" : "s"}: ${what}`);
    if (options.reload !== false) location.reload();
    return answer;
  } catch (error) {
    toast(`Not corrected: ${error.message}`);
    throw error;
  }
}

async function undo(ids) {
  try {
    const answer = await post("/api/undo", { corrections: ids });
    sessionStorage.removeItem("birdwatch-undo");
    sessionStorage.setItem("birdwatch-toast", `Undone: ${answer.undone.length}`);
    location.reload();
  } catch (error) {
    toast(`Not undone: ${error.message}`);
  }
}

function afterReload() {
  const text = sessionStorage.getItem("birdwatch-toast");
  if (!text) return;
  sessionStorage.removeItem("birdwatch-toast");
  const ids = JSON.parse(sessionStorage.getItem("birdwatch-undo") || "[]");
  toast(text, ids);
}

// -- Now: each camera's picture again once the last one arrived, at most 2 a second --
function livePictures() {
  for (const img of document.querySelectorAll("img.live")) {
    const again = () => setTimeout(() => { img.src = `${img.dataset.src}?t=${Date.now()}`; }, 500);
    img.addEventListener("load", again);
    img.addEventListener("error", () => setTimeout(again, 2000));
  }
  setInterval(async () => {
    let response;
    try {
      response = await fetch("/api/now", { credentials: "same-origin" });
    } catch {
      return; // the service is restarting: the next poll will tell
    }
    if (!response.ok) return;
    const status = await response.json();
    for (const [camera, s] of Object.entries(status.cameras)) {
      const fig = document.querySelector(`figure.cam[data-camera="${CSS.escape(camera)}"]`);
      if (!fig) continue;
      fig.querySelector("[data-state]").textContent = s.state;
      fig.querySelector("[data-fps]").textContent = `${s.fps} fps`;
      const visit = fig.querySelector("[data-visit]");
      if (s.visit) {
        const a = document.createElement("a");
        a.href = `/visit/${s.visit.id}`;
        a.textContent = `${s.visit.species} ${s.visit.score}`;
        visit.replaceChildren(a);
      } else visit.textContent = "no bird now";
    }
  }, 2000);
}

// -- a visit's page --
function visitForm() {
  const section = document.querySelector("section.correct");
  if (!section) return;
  const visit = section.dataset.visit;
  const form = section.querySelector("form.rename");
  if (form) {
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const species = form.species.value.trim();
      if (species) correct([visit], species);
    });
    form.querySelector("[data-confirm]").addEventListener("click", () => correct([visit], section.dataset.name));
    form.querySelector("[data-not-a-bird]").addEventListener("click", () => correct([visit], null));
  }
  for (const button of section.querySelectorAll("button.pickname")) {
    button.addEventListener("click", () => correct([visit], button.dataset.species));
  }
  for (const button of document.querySelectorAll("button.undo")) {
    button.addEventListener("click", () => undo([Number(button.dataset.correction)]));
  }
}

// -- many at once: the checkboxes of Today and a species' page --
function bulk() {
  const form = document.querySelector("form[data-bulk]");
  if (!form) return;
  const picked = () => [...document.querySelectorAll("input.pick:checked")].map((box) => box.dataset.visit);
  const update = () => {
    const n = picked().length;
    form.hidden = n === 0;
    form.querySelector("[data-count]").textContent = `${n} selected`;
    for (const box of document.querySelectorAll("input.pick")) box.closest(".card").classList.toggle("selected", box.checked);
  };
  document.addEventListener("change", (event) => { if (event.target.matches("input.pick")) update(); });
  const pickDay = document.querySelector("button[data-pick-day]");
  if (pickDay) {
    pickDay.addEventListener("click", () => {
      for (const box of document.querySelectorAll("input.pick")) {
        if (box.closest(".card").dataset.day === pickDay.dataset.pickDay) box.checked = true;
      }
      update();
    });
  }
  const pickAll = document.querySelector("button[data-pick-all]");
  if (pickAll) {
    pickAll.addEventListener("click", () => {
      for (const box of document.querySelectorAll("input.pick")) box.checked = true;
      update();
    });
  }
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const species = form.species.value.trim();
    if (species) correct(picked(), species);
  });
  form.querySelector("[data-not-a-bird]").addEventListener("click", () => correct(picked(), null));
  form.querySelector("[data-clear]").addEventListener("click", () => {
    for (const box of document.querySelectorAll("input.pick")) box.checked = false;
    update();
  });
}

// -- Review: one key per verdict, for a long queue --
function review() {
  const items = [...document.querySelectorAll(".review .item")];
  if (!items.length) return;
  let at = 0;
  const focus = (i) => {
    at = Math.max(0, Math.min(items.length - 1, i));
    items.forEach((item, j) => item.classList.toggle("current", j === at));
    items[at].focus();
  };
  const signedIn = () => csrf() !== "";
  const verdict = async (item, species) => {
    if (!signedIn()) { toast("Sign in to review"); return; }
    await correct([item.dataset.visit], species, { reload: false });
    item.classList.add("done");
    item.querySelector(".name").textContent = species === null ? "not a bird" : species;
    toast(`${species === null ? "not a bird" : species}`, lastCorrections);
    focus(at + 1);
  };
  items.forEach((item, i) => {
    item.addEventListener("click", () => focus(i));
    for (const button of item.querySelectorAll("button.pickname")) {
      button.addEventListener("click", () => verdict(item, button.dataset.species));
    }
  });
  document.addEventListener("keydown", (event) => {
    if (event.target.closest("input, textarea, select, button, a")) return; // their own keys: a button's Enter clicks it
    const item = items[at];
    const alts = [...item.querySelectorAll("button.pickname")];
    if (event.key === "j" || event.key === "ArrowDown") focus(at + 1);
    else if (event.key === "k" || event.key === "ArrowUp") focus(at - 1);
    else if (event.key === "y" || event.key === "Enter") verdict(item, item.dataset.name);
    else if (event.key === "x") verdict(item, null);
    else if (/^[1-9]$/.test(event.key) && alts[Number(event.key) - 1]) verdict(item, alts[Number(event.key) - 1].dataset.species);
    else if (event.key === "u" && lastCorrections.length) undo(lastCorrections);
    else if (event.key === "e") {
      const name = prompt("The right species:");
      if (name) verdict(item, name.trim());
    } else return;
    event.preventDefault();
  });
  focus(0);
}

document.addEventListener("DOMContentLoaded", () => {
  afterReload();
  if (document.body.dataset.page === "now") livePictures();
  visitForm();
  bulk();
  review();
});
