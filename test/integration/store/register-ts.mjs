// Registers ts-loader.mjs; used as `--import` / first import of a worker thread.
import { register } from 'node:module';
register('./ts-loader.mjs', import.meta.url);
