// Copy the browser builds GraphiQL needs out of node_modules into dist/, which errorgraph
// serves under /graphiql-assets/. No bundler: these packages ship ready UMD files.
import { copyFileSync, mkdirSync } from "node:fs";

const files = {
  "react.production.min.js": "node_modules/react/umd/react.production.min.js",
  "react-dom.production.min.js": "node_modules/react-dom/umd/react-dom.production.min.js",
  "graphiql.min.js": "node_modules/graphiql/graphiql.min.js",
  "graphiql.min.css": "node_modules/graphiql/graphiql.min.css",
  "plugin-explorer.umd.js": "node_modules/@graphiql/plugin-explorer/dist/index.umd.js",
  "plugin-explorer.css": "node_modules/@graphiql/plugin-explorer/dist/style.css",
};

mkdirSync("dist", { recursive: true });
for (const [name, source] of Object.entries(files)) {
  copyFileSync(source, `dist/${name}`);
}
console.log(`copied ${Object.keys(files).length} files to dist/`);
