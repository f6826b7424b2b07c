function qmroct_run(fname, volume_path, meta_path, params_path, outdir)
% QMROCT_RUN  Runtime wrapper of the qmroct "octave" algorithm contract.
%   Reads the staged input, calls  result = FNAME(vol, meta, params, outdir)
%   and writes OUTDIR/kqi.json. vol is double, size [depth, ascans, bscans]
%   (I(:,:,b) is B-scan b, as in MATLAB OCT code). result.kqis.<name> has
%   fields value, unit and optionally per_bscan (vector over B-scans, NaN =
%   null) and note; result.files (cellstr, relative to outdir) and
%   result.notes (cellstr) are optional. Any error exits non-zero.
  try
    [~, ~, ext] = fileparts(volume_path);
    if strcmpi(ext, '.mat')
      s = load(volume_path);
      vol = double(s.volume);
    else
      v = qmroct_read_npy(volume_path);  % (bscan, depth, ascan)
      if ndims(v) == 2
        v = reshape(v, [1 size(v)]);
      end
      vol = permute(v, [2 3 1]);
    end
    meta = jsondecode(fileread(meta_path));
    params = jsondecode(fileread(params_path));
    if isempty(params)
      params = struct();
    end
    result = feval(fname, vol, meta, params, outdir);
    out = struct();
    names = fieldnames(result.kqis);
    kqis = struct();
    for i = 1:numel(names)
      k = result.kqis.(names{i});
      e = struct();
      e.value = k.value;
      if isempty(e.value)
        e.value = NaN;
      end
      e.unit = k.unit;
      if isfield(k, 'per_bscan')
        e.per_bscan = num2cell(double(k.per_bscan(:)'));  % a cell always encodes as a JSON array
      end
      if isfield(k, 'note')
        e.note = k.note;
      end
      kqis.(names{i}) = e;
    end
    out.kqis = kqis;
    if isfield(result, 'files')
      out.files = result.files;
    end
    if isfield(result, 'notes')
      out.notes = result.notes;
    end
    fid = fopen(fullfile(outdir, 'kqi.json'), 'w');
    fputs(fid, jsonencode(out));
    fclose(fid);
  catch err
    fprintf(2, 'qmroct_run: %s: %s\n', fname, err.message);
    for i = 1:numel(err.stack)
      fprintf(2, '  at %s line %d\n', err.stack(i).name, err.stack(i).line);
    end
    exit(1);
  end
end
