import react from "@vitejs/plugin-react";
import { defineConfig } from "vite";

// The sample client's page; `npm run client:web` builds it into web/dist and serves it from the
// local client process (src/webclient/).
export default defineConfig({
  root: import.meta.dirname,
  plugins: [react()],
  build: { outDir: "dist", emptyOutDir: true, sourcemap: false },
});
