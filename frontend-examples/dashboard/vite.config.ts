import { defineConfig } from "vite";

// Relative asset paths: errorgraph serves the built files at `/`, and they also work from
// any other path or static host.
export default defineConfig({
  base: "./",
  build: { outDir: "dist", emptyOutDir: true, sourcemap: true },
});
