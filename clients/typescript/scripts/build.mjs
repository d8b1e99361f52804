// Builds the package twice from src/: ESM into dist/esm and CommonJS into dist/cjs, each with
// type declarations and a package.json that tells Node which module system the folder uses.
import { execFileSync } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
const tsc = path.join(root, 'node_modules', 'typescript', 'bin', 'tsc');

rmSync(path.join(root, 'dist'), { recursive: true, force: true });
for (const [config, folder, type] of [
  ['tsconfig.json', 'esm', 'module'],
  ['tsconfig.cjs.json', 'cjs', 'commonjs'],
]) {
  execFileSync(process.execPath, [tsc, '-p', path.join(root, config)], { stdio: 'inherit' });
  mkdirSync(path.join(root, 'dist', folder), { recursive: true });
  writeFileSync(path.join(root, 'dist', folder, 'package.json'), `${JSON.stringify({ type })}\n`);
}
