/* Formatting of numbers, durations, times and sizes (no DOM). */

export const isNum = (v) => typeof v === "number" && Number.isFinite(v);
export const fmtNum = (v, digits) => (isNum(v) ? v.toFixed(digits) : "n/a");
export const fmtFactor = (v) => (isNum(v) ? `${v.toFixed(2)}×` : "n/a");

export function fmtDuration(s) {
  if (!isNum(s)) return "—";
  s = Math.max(0, Math.round(s));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

export function fmtTime(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
}

export function fmtBytes(n) {
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB"];
  let i = -1;
  do { n /= 1024; i += 1; } while (n >= 1024 && i < units.length - 1);
  return `${n.toFixed(1)} ${units[i]}`;
}
