// Bundles harness.js with Headlamp's compiled frontend modules (from the
// installed @kinvolk/headlamp-plugin) into dist/harness.cjs. Only
// browser/app-only imports are replaced, by the files in stubs/.
import * as esbuild from 'esbuild';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));

// import specifier (as Headlamp's v2 API modules write it) -> stub file
const STUBS = [
  [/\/helpers\/getAppUrl$/, 'getAppUrl.js'],
  [/\/helpers\/addBackstageAuthHeaders$/, 'addBackstageAuthHeaders.js'],
  [/\/stateless\/getUserIdFromLocalStorage$/, 'getUserIdFromLocalStorage.js'],
  [/\/stateless\/findKubeconfigByClusterName$/, 'findKubeconfigByClusterName.js'],
  [/^\.\.\/\.\.\/\.\.\/cluster$/, 'cluster.js'],
];

const stubs = {
  name: 'headlamp-stubs',
  setup(build) {
    build.onResolve({ filter: /.*/ }, args => {
      if (!args.importer.includes(`${path.sep}@kinvolk${path.sep}headlamp-plugin${path.sep}`)) {
        return undefined;
      }
      for (const [re, file] of STUBS) {
        if (re.test(args.path)) {
          return { path: path.join(here, 'stubs', file) };
        }
      }
      return undefined;
    });
  },
};

export async function build(name = 'harness.cjs') {
  const outfile = path.join(here, 'dist', name);
  await esbuild.build({
    entryPoints: [path.join(here, 'harness.js')],
    outfile,
    bundle: true,
    platform: 'node',
    format: 'cjs',
    target: 'node18',
    logLevel: 'warning',
    // Headlamp reads this build-time flag through import.meta.env.
    define: {
      'import.meta.env.REACT_APP_ENABLE_WEBSOCKET_MULTIPLEXER': '"true"',
      'process.env.NODE_ENV': '"production"',
    },
    external: ['ws', 'esbuild'],
    plugins: [stubs],
  });
  return outfile;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  await build();
}
