// The page: pick or drop a video, upload it with progress, show the verdict and the report.
"use strict";

const $ = (id) => document.getElementById(id);
const maxBytes = parseFloat(document.body.dataset.maxUploadMb) * 1e6;
let reportUrl = null;

function show(section) {
  for (const id of ["upload", "progress", "problem", "result"]) $(id).hidden = id !== section;
}

function progress(text, fraction) {
  show("progress");
  $("status-text").textContent = text;
  $("percent").textContent = fraction === null ? "" : `${Math.round(100 * fraction)}%`;
  $("bar-fill").parentElement.classList.toggle("busy", fraction === null);
  $("bar-fill").style.width = fraction === null ? "" : `${100 * fraction}%`;
}

function problem(text) {
  $("problem-text").textContent = text;
  show("problem");
}

function reset() {
  $("file").value = "";
  show("upload");
}

function number(value) {
  return value === null || value === undefined ? "n/a" : value.toFixed(2);
}

function showResult(record) {
  const card = $("verdict-card");
  card.className = "verdict-card " + record.verdict.replace(/ /g, "-");
  $("verdict").textContent = record.verdict;
  $("verdict-detail").textContent = record.fake_probability === null
    ? "No face was found in the frames looked at, so there is nothing to judge."
    : `fake probability ${number(record.fake_probability)}, ${record.certainty}`;
  const tracks = record.tracks.length;
  $("verdict-facts").textContent = `${record.path} · ${record.frames_sampled} frames, `
    + `${tracks} face track${tracks === 1 ? "" : "s"}, checked in ${record.elapsed_s.toFixed(1)} s`;
  if (reportUrl) URL.revokeObjectURL(reportUrl);
  reportUrl = URL.createObjectURL(new Blob([record.report_html], { type: "text/html" }));
  $("download").href = reportUrl;
  $("download").download = `${record.path.replace(/\.[^.]*$/, "")}-report.html`;
  const frame = $("report");
  frame.onload = () => {
    // The card above already says the verdict: the report's own banner would repeat it.
    const banner = frame.contentDocument.querySelector(".banner");
    if (banner) banner.remove();
    frame.style.height = frame.contentDocument.documentElement.scrollHeight + 20 + "px";
  };
  frame.srcdoc = record.report_html;
  show("result");
}

function upload(file) {
  if (file.size > maxBytes) {
    problem(`${file.name} is ${(file.size / 1e6).toFixed(0)} MB; this server takes videos up to ${maxBytes / 1e6} MB.`);
    return;
  }
  $("file-name").textContent = file.name;
  progress("Uploading…", 0);
  const form = new FormData();
  form.append("video", file, file.name);
  const request = new XMLHttpRequest();
  request.open("POST", "/api/check?report=true");
  request.responseType = "json";
  request.upload.onprogress = (event) => {
    if (event.lengthComputable) progress("Uploading…", event.loaded / event.total);
  };
  request.upload.onload = () => progress("Analysing the faces…", null);
  request.onload = () => {
    if (request.status === 200 && request.response) showResult(request.response);
    else problem((request.response && request.response.detail) || `The server answered with error ${request.status}.`);
  };
  request.onerror = () => problem("The upload failed: the server could not be reached.");
  request.send(form);
}

function choose(files) {
  if (files && files.length) upload(files[0]);
}

window.addEventListener("DOMContentLoaded", () => {
  const drop = $("drop");
  $("file").addEventListener("change", () => choose($("file").files));
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") { event.preventDefault(); $("file").click(); }
  });
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.remove("over"); });
  }
  drop.addEventListener("drop", (event) => choose(event.dataTransfer.files));
  // A file dropped next to the target should not make the browser navigate away from the page.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
  for (const button of document.querySelectorAll(".again")) button.addEventListener("click", reset);
  fetch("/api/health").then((r) => r.json()).then((health) => {
    $("model-name").textContent = `unmask ${health.unmask} · model: ${health.model.name}`;
  }).catch(() => {});
});
