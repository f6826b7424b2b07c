function data = qmroct_read_npy(path)
% QMROCT_READ_NPY  Read a NumPy .npy file (v1/v2/v3, little-endian numeric) into an array.
%   data = qmroct_read_npy(path) returns the array with the same axis order as in
%   NumPy (C order is converted), as double. Works in GNU Octave and MATLAB.
  fid = fopen(path, 'r', 'ieee-le');
  if fid < 0
    error('qmroct:npy', 'cannot open %s', path);
  end
  cleaner = onCleanup(@() fclose(fid));
  magic = fread(fid, 6, 'uint8')';
  if numel(magic) < 6 || ~isequal(magic, [147 double('NUMPY')])
    error('qmroct:npy', '%s is not a .npy file', path);
  end
  major = fread(fid, 1, 'uint8');
  fread(fid, 1, 'uint8');  % minor version
  if major == 1
    hlen = fread(fid, 1, 'uint16');
  else
    hlen = fread(fid, 1, 'uint32');
  end
  header = char(fread(fid, hlen, 'uint8')');
  tok = regexp(header, '''descr''\s*:\s*''([^'']*)''', 'tokens', 'once');
  if isempty(tok)
    error('qmroct:npy', '%s: no descr in header', path);
  end
  descr = tok{1};
  fortran = ~isempty(regexp(header, '''fortran_order''\s*:\s*True', 'once'));
  tok = regexp(header, '''shape''\s*:\s*\(([^)]*)\)', 'tokens', 'once');
  shape = str2num(['[' tok{1} ']']); %#ok<ST2NM>
  if isempty(shape)
    shape = 1;
  end
  types = {'<f4', 'single'; '<f8', 'double'; '<u2', 'uint16'; '|u1', 'uint8'; '<i2', 'int16'; ...
           '<i4', 'int32'; '<u4', 'uint32'; '<i8', 'int64'; '|i1', 'int8'; '<u1', 'uint8'};
  k = find(strcmp(types(:, 1), descr), 1);
  if isempty(k)
    error('qmroct:npy', '%s: unsupported dtype %s', path, descr);
  end
  n = prod(shape);
  raw = fread(fid, n, [types{k, 2} '=>double']);
  if numel(raw) ~= n
    error('qmroct:npy', '%s: truncated (expected %d values, got %d)', path, n, numel(raw));
  end
  if numel(shape) == 1
    data = raw;
  elseif fortran
    data = reshape(raw, shape);
  else
    data = permute(reshape(raw, fliplr(shape)), numel(shape):-1:1);
  end
end
